import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import SystemPackage
import Testing

/// Runs `body` on a thread of its own; `join()` waits for it.
final class Racer: Sendable {
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () -> Void) {
        let done = self.done
        Thread {
            body()
            done.signal()
        }.start()
    }

    func join() {
        done.wait()
    }
}

/// Busy-waits about `iterations` loop turns: a random, short delay that moves a racing call
/// around the kernel's completion.
@inline(never)
func spin(_ iterations: Int) {
    var counter = 0
    for _ in 0..<iterations { counter &+= 1 }
    withExtendedLifetime(counter) {}
}

extension RingPortTests {
    /// Cancellations that race with the kernel finishing the operation (`CancelIoEx` while the
    /// I/O completes): exactly one completion per operation, its context back, no byte lost.
    @Suite struct CancellationRaceTests {
        @Test func cancellingAReceiveAsItCompletesLosesNoByte() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let (left, right) = try makeSocketPair()
            defer { close(right) }
            let handle = try port.associate(descriptor: left)
            let context = IOContext(capacity: 16)
            var generator = SeededGenerator(state: 21)
            var outcomes = (received: 0, cancelled: 0)
            for iteration in 0..<2_000 {
                let byte = UInt8(truncatingIfNeeded: iteration)
                try port.read(handle, into: context)
                #expect(try worker.dequeue(timeout: .zero) == nil, "the receive waits for data")
                // The byte arrives from another thread while this one cancels the receive.
                let delay = Int.random(in: 0..<10_000, using: &generator)
                let racer = Racer {
                    var byte = byte
                    spin(delay)
                    _ = write(right, &byte, 1)
                }
                spin(Int.random(in: 0..<300_000, using: &generator))
                _ = try port.cancel(context)
                let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                racer.join()
                #expect(completion.operation == .read && completion.context === context)
                #expect(!context.isInFlight)
                if completion.bytesTransferred == 1 {
                    outcomes.received += 1
                    #expect(context.bytes(in: 0..<1) == [byte])
                } else {
                    // The cancellation won: the byte is still in the socket.
                    #expect(completion.isCancelled, "\(completion)")
                    outcomes.cancelled += 1
                    try port.read(handle, into: context)
                    let retry = try #require(try worker.dequeue(timeout: .seconds(5)))
                    #expect(retry.bytesTransferred == 1 && context.bytes(in: 0..<1) == [byte])
                }
                // Nothing else arrives for this operation.
                #expect(try worker.dequeue(timeout: .zero) == nil)
                #expect(try !port.cancel(context))
            }
            #expect(outcomes.received + outcomes.cancelled == 2_000)
            #expect(
                outcomes.received > 0 && outcomes.cancelled > 0, "both sides of the race must have won: \(outcomes)")
            port.close(handle)
            worker.detach()
            port.close()
            let statistics = port.statistics
            #expect(statistics.staleCompletions == 0)
            #expect(statistics.submittedOperations == statistics.completedOperations)
        }

        /// Two receives wait on one socket, bytes arrive, and the later receive is cancelled
        /// before anything reaped them: the bytes go to the earlier receive, in order, and the
        /// later one ends cancelled. (The epoll backend gave a cancelled receive one last try,
        /// which took the bytes ahead of the earlier receive.)
        @Test func aCancelledReceiveDoesNotTakeBytesMeantForAnEarlierOne() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let (left, right) = try makeSocketPair()
            defer { close(right) }
            let handle = try port.associate(descriptor: left)
            let first = IOContext(capacity: 16)
            let second = IOContext(capacity: 16)
            try port.read(handle, into: first)
            try port.read(handle, into: second)
            #expect(try worker.dequeue(timeout: .zero) == nil, "both receives wait for data")
            let bytes = Array("hello".utf8)
            #expect(bytes.withUnsafeBytes { write(right, $0.baseAddress, $0.count) } == bytes.count)
            usleep(20_000)
            _ = try port.cancel(second)
            var completions: [Completion] = []
            for _ in 0..<2 {
                completions.append(try #require(try worker.dequeue(timeout: .seconds(5))))
            }
            let ofFirst = try #require(completions.first { $0.context === first })
            let ofSecond = try #require(completions.first { $0.context === second })
            #expect(ofFirst.bytesTransferred == bytes.count && first.bytes(in: 0..<bytes.count) == bytes)
            #expect(ofSecond.isCancelled, "\(ofSecond)")
            port.close(handle)
            worker.detach()
            port.close()
        }

        @Test func cancellingAMultishotReceiveMidStreamLosesNoByte() throws {
            let (port, worker, handle, context, right) = try startMultishotReceive(buffers: 16, size: 512)
            defer { close(right) }
            var generator = SeededGenerator(state: 22)
            let streamSize = 48 * 1024
            for round in 0..<150 {
                let stream = SeededGenerator(state: UInt64(round)).bytesArray(count: streamSize)
                if round > 0 { try port.receiveMultishot(handle, context: context) }
                let chunk = Int.random(in: 1...4096, using: &generator)
                let writer = Racer {
                    var sent = 0
                    while sent < stream.count {
                        let count = min(chunk, stream.count - sent)
                        let written = stream.withUnsafeBytes { write(right, $0.baseAddress! + sent, count) }
                        if written > 0 { sent += written }
                    }
                }
                var received: [UInt8] = []
                received.reserveCapacity(streamSize)
                let cancelAfter = Int.random(in: 0...20, using: &generator)
                var completions = 0
                var cancelled = false
                var ended = false
                if cancelAfter == 0 {
                    _ = try port.cancel(context)
                    cancelled = true
                }
                while !ended {
                    let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                    completions += 1
                    if let buffer = completion.receivedBuffer {
                        buffer.withUnsafeBytes { received += $0 }
                        buffer.release()
                    }
                    if !cancelled && (completions == cancelAfter || received.count == streamSize) {
                        _ = try port.cancel(context)
                        cancelled = true
                    }
                    if !completion.hasMore {
                        ended = true
                        if received.count < streamSize && completion.error != nil {
                            #expect(completion.isCancelled || completion.error == .noBufferSpace, "\(completion)")
                        }
                    }
                }
                // Whatever the cancellation left in the socket is read the plain way (the writer
                // may be blocked until it is).
                let rest = IOContext(capacity: 64 * 1024)
                while received.count < streamSize {
                    try port.read(handle, into: rest, range: 0..<min(rest.capacity, streamSize - received.count))
                    let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                    #expect(completion.bytesTransferred > 0, "\(completion)")
                    received += rest.bytes(in: 0..<completion.bytesTransferred)
                }
                writer.join()
                #expect(received == stream, "round \(round): \(firstDifference(received, stream) ?? -1)")
                #expect(port.statistics.buffersOutstanding == 0)
                #expect(!context.isInFlight)
            }
            port.close(handle)
            worker.detach()
            port.close()
            #expect(port.statistics.staleCompletions == 0)
        }

        /// A send waiting for room in a full socket, cancelled while the peer starts draining:
        /// it completes once, with the bytes the kernel sent (all, part, or none: `ECANCELED`),
        /// and the peer receives exactly those.
        @Test func cancellingASendReportsExactlyTheBytesThePeerGets() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let (peer, accepted) = try makeLoopbackTCPPair()
            defer { close(peer) }
            // Tiny buffers would leave the window shut for hundreds of milliseconds after the
            // peer reads (TCP's silly-window avoidance); a 64 KiB send buffer fills quickly enough.
            var sendBuffer: Int32 = 64 * 1024
            setsockopt(accepted, SOL_SOCKET, SO_SNDBUF, &sendBuffer, socklen_t(MemoryLayout<Int32>.size))
            let handle = try port.associate(descriptor: accepted)
            let payload = SeededGenerator(state: 23).bytesArray(count: 64 * 1024)
            let context = IOContext(capacity: payload.count)
            context.copyBytes(from: payload)
            var generator = SeededGenerator(state: 24)
            var outcomes = (whole: 0, partial: 0, cancelled: 0)
            let filler = [UInt8](repeating: 0, count: 64 * 1024)
            for attempt in 0..<200 {
                // Every 8th attempt cancels before the peer starts draining, so that the
                // cancellation path runs however the races fall (under ThreadSanitizer the peer
                // won all 200); the others race the cancellation with the draining.
                let cancelFirst = attempt % 8 == 0
                // Fill the socket so that the send has to wait for room. A send refused with
                // EAGAIN does not yet mean the peer's window is shut: loopback may still move
                // queued bytes on to the peer a moment later and make room, in which case the
                // send completes before any cancellation. Before a cancel-first attempt the
                // filling goes on until a pause frees nothing more, so the send must wait.
                var filled = 0
                var idleRounds = 0
                while idleRounds < (cancelFirst ? 3 : 1) {
                    var added = 0
                    while true {
                        let count = send(accepted, filler, filler.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                        if count <= 0 { break }
                        added += count
                    }
                    filled += added
                    idleRounds = added == 0 || !cancelFirst ? idleRounds + 1 : 0
                    if cancelFirst { usleep(2_000) }
                }
                try port.write(handle, from: context, range: 0..<payload.count)
                // Submitted here; it usually waits for room, but the kernel may have moved the
                // filler on to the peer meanwhile and sent some at once.
                var early = try worker.dequeue(timeout: .zero)
                if cancelFirst && early == nil {
                    // The cancellation reaches the kernel when this thread next enters it: wait
                    // for the completion here, before the peer starts draining.
                    _ = try port.cancel(context)
                    let cancelled: Completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                    early = cancelled
                }
                // The peer drains on a thread of its own while this one cancels the send.
                let received = LockedBox<[UInt8]>([])
                let stop = LockedBox(false)
                let reader = Racer {
                    var buffer = [UInt8](repeating: 0, count: 16 * 1024)
                    while !stop.withLock({ $0 }) {
                        let count = recv(peer, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                        if count > 0 { received.withLock { $0 += buffer[0..<count] } } else { usleep(50) }
                    }
                }
                // Cancel before the peer reads, while it does, or after the send is done.
                spin(Int.random(in: 0..<300_000, using: &generator))
                if early == nil && !cancelFirst { _ = try port.cancel(context) }
                let completion = try #require(try early ?? worker.dequeue(timeout: .seconds(5)))
                #expect(completion.operation == .write && !context.isInFlight)
                #expect(completion.error == nil || completion.isCancelled, "\(completion)")
                let sent = completion.bytesTransferred
                if completion.isCancelled {
                    outcomes.cancelled += 1
                } else if sent == payload.count {
                    outcomes.whole += 1
                } else {
                    outcomes.partial += 1
                }
                // Everything sent reaches the peer; then nothing more comes.
                _ = eventually(timeout: .seconds(30)) { received.withLock { $0.count } >= filled + sent }
                usleep(2_000)
                stop.withLock { $0 = true }
                reader.join()
                let bytes = received.withLock { $0 }
                #expect(
                    bytes.count == filled + sent,
                    "\(completion): the peer got \(bytes.count - filled) bytes of the send")
                #expect(bytes[..<min(filled, bytes.count)].allSatisfy { $0 == 0 })
                if bytes.count > filled { #expect(bytes[filled...].elementsEqual(payload[0..<(bytes.count - filled)])) }
                if bytes.count != filled + sent { break }
            }
            #expect(outcomes.whole + outcomes.partial + outcomes.cancelled == 200, "\(outcomes)")
            #expect(outcomes.cancelled > 0, "no cancellation won in 200 tries: \(outcomes)")
            port.close(handle)
            worker.detach()
            port.close()
            #expect(port.statistics.staleCompletions == 0)
        }

        /// Closing a handle while its operations complete: each completes once (data or
        /// cancelled), every context comes back, and no descriptor is left open.
        @Test func closingAHandleAsItsOperationsCompleteLeavesNothingBehind() throws {
            let descriptorsBefore = DescriptorSnapshot()
            var configuration = CompletionPort.Configuration()
            configuration.ringCount = 1
            let port = try CompletionPort(configuration: configuration)
            let worker = port.makeWorker()
            var generator = SeededGenerator(state: 25)
            for _ in 0..<500 {
                let (left, right) = try makeSocketPair()
                let handle = try port.associate(descriptor: left)
                let reading = IOContext(capacity: 64)
                let writing = IOContext(capacity: 64)
                writing.copyBytes(from: [UInt8](repeating: 1, count: 64))
                try port.read(handle, into: reading)
                try port.write(handle, from: writing, range: 0..<64)
                let delay = Int.random(in: 0..<400, using: &generator)
                let racer = Racer {
                    spin(delay); port.close(handle)
                }
                var byte: UInt8 = 9
                _ = write(right, &byte, 1)
                var seen: [ObjectIdentifier: Int] = [:]
                for _ in 0..<2 {
                    let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                    let context = try #require(completion.context)
                    seen[ObjectIdentifier(context), default: 0] += 1
                    #expect(
                        completion.error == nil || completion.isCancelled || completion.error == .badFileDescriptor,
                        "\(completion)")
                }
                racer.join()
                #expect(seen[ObjectIdentifier(reading)] == 1 && seen[ObjectIdentifier(writing)] == 1)
                #expect(!reading.isInFlight && !writing.isInFlight)
                #expect(try worker.dequeue(timeout: .zero) == nil)
                close(right)
            }
            worker.detach()
            port.close()
            #expect(port.statistics.staleCompletions == 0)
            #expect(port.statistics.openHandles == 0)
            #expect(eventually { descriptorsBefore.allClosedAgain }, "still open: \(descriptorsBefore.openedSince)")
        }
    }
}
