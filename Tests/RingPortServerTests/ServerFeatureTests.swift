import Foundation
import Glibc
import RingPort
import RingPortServer
import RingPortTestSupport
import Synchronization
import Testing

/// Answers any received bytes with the whole payload of one shared context, sent without a copy.
final class LargeReplyHandler: ConnectionHandler {
    let payload: [UInt8]
    let finished = Atomic<Int>(0)

    init(payload: [UInt8]) {
        self.payload = payload
    }

    func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        let context = IOContext(capacity: payload.count)
        context.copyBytes(from: payload)
        connection.write(context, range: 0..<payload.count)
    }

    func connection(_ connection: Connection, finishedWriting context: IOContext) {
        #expect(!context.isInFlight)
        finished.add(1, ordering: .relaxed)
    }
}

extension RingPortServerTests {
    @Suite struct ServerFeatureTests {
        @Test func servesIPv6() throws {
            try withServer(configure: { $0.address = try! SocketAddress(host: "::1", port: 0) }) { server in
                #expect(server.localAddress.family == .ipv6)
                EchoLoad(connections: 20, messagesPerConnection: 2, maximumMessageSize: 8192, seed: 6)
                    .expectCleanRun(against: server.localAddress)
            }
        }

        @Test func largeWritesOfApplicationContextsGoOutWithZeroCopy() throws {
            let payload = SeededGenerator(state: 77).bytesArray(count: 1 << 20)
            let handler = LargeReplyHandler(payload: payload)
            try withServer(handler: handler, configure: { $0.zeroCopyThreshold = 64 * 1024 }) { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                try client.send([1])
                #expect(try client.receive(count: payload.count) == payload)
                #expect(eventually { handler.finished.load(ordering: .relaxed) == 1 })
                client.close()
            }
        }

        @Test func exhaustedProvidedBuffersResumeWhenBuffersComeBack() throws {
            try withServer(configure: {
                $0.port.backend = .ioURing  // provided buffers are io_uring's
                $0.port.providedBuffers = .init(count: 4, size: 1024)
                // Receives of 1 KiB are sent back from their buffers, which stay out until sent.
                $0.writeChunkSize = 1024
            }) { server in
                EchoLoad(connections: 50, messagesPerConnection: 4, maximumMessageSize: 64 * 1024, seed: 12)
                    .expectCleanRun(against: server.localAddress)
                #expect(server.statistics.bufferExhaustions > 0, "the 4 buffers ran out under this load")
                #expect(eventually { server.portStatistics.buffersOutstanding == 0 })
            }
        }

        @Test func connectionsSpreadOverRings() throws {
            let rings = LockedBox<[Int: Int]>([:])
            struct RingCounter: ConnectionHandler {
                let rings: LockedBox<[Int: Int]>
                func connectionOpened(_ connection: Connection) {
                    rings.withLock { $0[connection.id.ring, default: 0] += 1 }
                }
                func connection(_ connection: Connection, received bytes: ReceivedBytes) {
                    connection.write(bytes)
                }
            }
            try withServer(handler: RingCounter(rings: rings), configure: { $0.port.ringCount = 2 }) { server in
                EchoLoad(connections: 40, messagesPerConnection: 1, maximumMessageSize: 100, seed: 2)
                    .expectCleanRun(against: server.localAddress)
            }
            #expect(rings.withLock { $0 } == [0: 20, 1: 20])
        }
    }
}
