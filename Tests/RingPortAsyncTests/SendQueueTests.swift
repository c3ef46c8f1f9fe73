import NIOCore
import RingPortTestSupport
import Testing

@testable import RingPortAsync

/// The outbound queue: the first buffer inline, the rest in a deque, in order whatever the mix
/// of appends, prepends and pops.
extension RingPortAsyncTests {
    @Suite struct SendQueueTests {
        func buffer(_ text: String) -> ByteBuffer {
            ByteBuffer(string: text)
        }

        func contents(_ queue: SendQueue) -> [String] {
            queue.map { String(buffer: $0) }
        }

        @Test func buffersLeaveInTheOrderTheyWereQueued() {
            var queue = SendQueue()
            #expect(queue.isEmpty && queue.count == 0 && queue.popFirst() == nil)
            queue.append(buffer("a"))
            #expect(contents(queue) == ["a"])
            queue.append(buffer("b"))
            queue.append(buffer("c"))
            #expect(contents(queue) == ["a", "b", "c"] && queue.count == 3)
            #expect(String(buffer: queue[1]) == "b")
            #expect(queue.prefix(2).map { String(buffer: $0) } == ["a", "b"])
            #expect(queue.popFirst().map { String(buffer: $0) } == "a")
            // The unsent rest of a partly sent buffer goes back in front.
            queue.prepend(buffer("b-rest"))
            #expect(contents(queue) == ["b-rest", "b", "c"])
            queue.removeAll()
            #expect(queue.isEmpty && queue.popFirst() == nil)
            queue.prepend(buffer("x"))
            queue.append(buffer("y"))
            #expect(contents(queue) == ["x", "y"])
        }

        @Test func aRandomMixAgreesWithAnArray() {
            var queue = SendQueue()
            var model: [String] = []
            var generator = SystemRandomNumberGenerator()
            for step in 0..<10_000 {
                switch Int.random(in: 0..<4, using: &generator) {
                case 0, 1:
                    queue.append(buffer("\(step)"))
                    model.append("\(step)")
                case 2:
                    #expect(queue.popFirst().map { String(buffer: $0) } == model.first)
                    if !model.isEmpty { model.removeFirst() }
                default:
                    queue.prepend(buffer("p\(step)"))
                    model.insert("p\(step)", at: 0)
                }
                if step % 97 == 0 { #expect(contents(queue) == model) }
            }
            #expect(contents(queue) == model)
        }
    }
}
