import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import Testing

@testable import RingPortServer

extension RingPortServerTests {
    @Suite struct ServerLimitTests {
        @Test func echoesAThousandClientsWithPayloadsUpToOneMebibyte() throws {
            raiseDescriptorLimit(to: 8192)
            try withServer { server in
                EchoLoad(
                    connections: 1000, messagesPerConnection: 1, maximumMessageSize: 1 << 20, seed: 1000,
                    timeout: .seconds(120)
                )
                .expectCleanRun(against: server.localAddress)
                #expect(eventually { server.statistics.open == 0 })
                #expect(server.statistics.accepted == 1000)
                #expect(eventually { server.portStatistics.buffersOutstanding == 0 })
            }
        }

        /// Expects `TCPServer` to refuse the test configuration changed by `change` as an
        /// invalid argument.
        private func expectRefused(
            _ change: (inout TCPServer.Configuration) -> Void, sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            var configuration = try testServerConfiguration()
            change(&configuration)
            let error = #expect(throws: RingPortError.self, sourceLocation: sourceLocation) {
                _ = try TCPServer(configuration: configuration, handler: EchoHandler())
            }
            #expect(error?.code == .invalidArgument, sourceLocation: sourceLocation)
        }

        @Test func aCompletionBatchBelowOneIsRejected() throws {
            try expectRefused { $0.completionBatch = 0 }
        }

        /// An idle timeout of zero or less would close every connection at the first sweep: it
        /// is refused (nil is the way to turn the timeout off).
        @Test(arguments: [Duration.zero, .milliseconds(-5)])
        func anIdleTimeoutThatIsNotPositiveIsRejected(timeout: Duration) throws {
            try expectRefused { $0.idleTimeout = timeout }
        }

        /// The minimum send rate is measured from when bytes begin to wait, not from the last
        /// progress before them: a reply after a quiet spell, read at more than the rate, is
        /// not cut.
        @Test func aReplyAfterAQuietSpellIsMeasuredFromWhenItWasQueued() throws {
            // Only sends count: the request itself is not progress.
            try withSendRateServer(countingReceivedBytes: false) { server in
                let client = try BlockingClient(
                    connectingTo: server.localAddress, receiveTimeout: .seconds(5), receiveBufferSize: 4096)
                // Quiet for most of the idle timeout, then a request whose echo is read at about
                // 160 KiB per second (8 KiB every 50 ms), 2.5 times the rate.
                usleep(2_800_000)
                let payload = [UInt8](repeating: 0x5C, count: 512 * 1024)
                try client.send(payload)
                var buffer = [UInt8](repeating: 0, count: 8192)
                var received = 0
                while received < payload.count {
                    let count = client.receiveSome(into: &buffer)
                    guard count > 0 else { break }
                    received += count
                    usleep(50_000)
                }
                #expect(received == payload.count, "the reply was cut after \(received) bytes")
                #expect(server.statistics.idleTimeouts == 0)
                client.close()
            }
        }

        /// A minimum send rate of zero or less is refused (nil is the way to allow any rate).
        @Test(arguments: [0, -240])
        func aMinimumSendRateThatIsNotPositiveIsRejected(rate: Int) throws {
            try expectRefused { $0.minimumSendRate = rate }
        }

        @Test func connectionsBeyondTheLimitAreRefusedWhileOthersAreServed() throws {
            try withServer(configure: { $0.maximumConnections = 10 }) { server in
                let held = try (0..<10).map { _ in try BlockingClient(connectingTo: server.localAddress) }
                for client in held {
                    try client.send([1])
                    #expect(try client.receive(count: 1) == [1])
                }
                // The eleventh and twelfth are accepted and closed at once.
                for _ in 0..<2 {
                    let refused = try BlockingClient(connectingTo: server.localAddress, receiveTimeout: .seconds(5))
                    #expect((try? refused.receive(count: 1)) ?? [] == [])
                    refused.close()
                }
                #expect(eventually { server.statistics.refused == 2 })
                // The held ones still work.
                for client in held {
                    try client.send([2, 3])
                    #expect(try client.receive(count: 2) == [2, 3])
                    client.close()
                }
                // Once they are gone there is room again.
                #expect(eventually { server.statistics.open == 0 })
                let late = try BlockingClient(connectingTo: server.localAddress)
                try late.send([9])
                #expect(try late.receive(count: 1) == [9])
                late.close()
            }
        }

        @Test func idleTimeoutClosesASilentClientOnly() throws {
            try withServer(configure: { $0.idleTimeout = .milliseconds(400) }) { server in
                let silent = try BlockingClient(connectingTo: server.localAddress, receiveTimeout: .seconds(5))
                let chatty = try BlockingClient(connectingTo: server.localAddress)
                let start = ContinuousClock.now
                // The chatty one talks every 100 ms for a second.
                while ContinuousClock.now - start < .seconds(1) {
                    try chatty.send([7])
                    #expect(try chatty.receive(count: 1) == [7])
                    usleep(100_000)
                }
                #expect(try silent.receive(count: 1) == [], "the silent client was closed")
                try chatty.send([8])
                #expect(try chatty.receive(count: 1) == [8])
                #expect(server.statistics.idleTimeouts == 1)
                silent.close()
                chatty.close()
            }
        }

        /// A connection closing gracefully (the peer sent its FIN) whose peer never reads what is
        /// still queued for it: the idle timeout closes it too, instead of leaving it draining
        /// for good with its descriptor and queue (before, the idle check skipped every
        /// connection that was closing).
        @Test func aClosingConnectionWhosePeerDoesNotReadIsClosedAtTheIdleTimeout() throws {
            try withServer(configure: {
                $0.idleTimeout = .milliseconds(400)
                $0.maximumQueuedWriteBytes = 64 << 20
            }) { server in
                let client = try BlockingClient(
                    connectingTo: server.localAddress, receiveTimeout: .seconds(5), receiveBufferSize: 4096)
                // More than the kernel's socket buffers take: the rest of the echo stays queued.
                try client.send([UInt8](repeating: 0x21, count: 16 << 20))
                shutdown(client.descriptor, Int32(SHUT_WR))
                #expect(eventually { server.statistics.open == 0 }, "the draining connection was not closed")
                #expect(server.statistics.idleTimeouts == 1)
                client.setResetOnClose()
                client.close()
            }
        }

        /// A peer that reads a little, often, but slower than the minimum send rate while the
        /// server has bytes for it (a slow-read attack) makes no progress: it is closed at the
        /// idle timeout. A peer that reads as fast as it can gets everything.
        @Test func aPeerThatReadsSlowerThanTheMinimumSendRateIsClosedAtTheIdleTimeout() throws {
            // The slow reader below takes about 20 KiB per second; the fast one, through a
            // 4 KiB send buffer, tens of megabytes.
            try withSendRateServer(countingReceivedBytes: true) { server in
                let payload = [UInt8](repeating: 0x21, count: 16 << 20)
                let fast = try BlockingClient(connectingTo: server.localAddress, receiveTimeout: .seconds(30))
                // The server reads it all (its queue takes 64 MiB) and queues the echo.
                try fast.send(payload)
                let echoed = try fast.receive(count: payload.count)
                // Closed before the comparison, which may take longer than the idle timeout.
                fast.close()
                #expect(eventually { server.statistics.open == 0 })
                #expect(server.statistics.idleTimeouts == 0)
                #expect(echoed.count == payload.count)
                #expect(firstDifference(echoed, payload) == nil)

                let slow = try BlockingClient(
                    connectingTo: server.localAddress, receiveTimeout: .seconds(5), receiveBufferSize: 4096)
                try slow.send(payload)
                shutdown(slow.descriptor, Int32(SHUT_WR))
                // 1 KiB every 50 ms, until the test is done: every few reads let a send of the
                // server complete, which counted as progress before the minimum rate.
                let done = LockedBox(false)
                let received = LockedBox(0)
                let reader = Thread {
                    var buffer = [UInt8](repeating: 0, count: 1024)
                    while !done.withLock({ $0 }) {
                        let count = slow.receiveSome(into: &buffer)
                        guard count > 0 else { break }
                        received.withLock { $0 += count }
                        usleep(50_000)
                    }
                }
                reader.start()
                let closed = eventually(timeout: .seconds(30)) { server.statistics.open == 0 }
                done.withLock { $0 = true }
                #expect(closed, "the slow reader was not closed")
                #expect(server.statistics.idleTimeouts == 1)
                #expect(received.withLock { $0 } < payload.count)
                // Wait for the reader (its receive times out in 5 s at most) before closing.
                #expect(eventually(timeout: .seconds(10)) { reader.isFinished })
                slow.setResetOnClose()
                slow.close()
            }
        }

        @Test func aClientThatNeverReadsCannotGrowServerMemory() throws {
            let limit = 256 * 1024
            try withServer(configure: {
                $0.maximumQueuedWriteBytes = limit
                // A small buffer pool, so that what the pool may hold (1 MiB, resident once the
                // kernel has written into it) stays small beside the bound checked below.
                $0.port.providedBuffers = .init(count: 64, size: 16384)
            }) { server in
                let hog = try BlockingClient(
                    connectingTo: server.localAddress, receiveTimeout: .seconds(2), receiveBufferSize: 64 * 1024)
                let before = residentBytes()
                // Push 64 MiB without reading: the sends stall once the server stops reading.
                let chunk = [UInt8](repeating: 0x5A, count: 1 << 20)
                var sent = 0
                for _ in 0..<64 {
                    guard (try? hog.send(chunk)) != nil else { break }
                    sent += chunk.count
                }
                #expect(sent < 64 << 20, "the server stopped reading, so the client's sends blocked")
                #expect(eventually { server.statistics.backpressurePauses >= 1 })
                let growth = residentBytes() - before
                #expect(growth < 16 << 20, "server memory grew by \(growth) bytes")
                // Others are still served.
                let other = try BlockingClient(connectingTo: server.localAddress)
                try other.send([1, 2, 3])
                #expect(try other.receive(count: 3) == [1, 2, 3])
                other.close()
                hog.setResetOnClose()
                hog.close()
                #expect(eventually { server.statistics.open == 0 })
            }
        }
    }
}

/// Runs `body` with an echo server for the minimum send rate's tests: 4 KiB send buffers
/// (``SmallSendBufferEcho``), a 3 s idle timeout, a rate of 64 KiB/s (192 KiB per idle timeout),
/// and a 64 MiB write queue so that the server reads a whole request before echoing it.
private func withSendRateServer(countingReceivedBytes: Bool, _ body: (TCPServer) throws -> Void) throws {
    try withServer(
        handler: SmallSendBufferEcho(),
        configure: {
            $0.idleTimeout = .seconds(3)
            $0.minimumSendRate = 64 * 1024
            $0.idleTimeoutCountsReceivedBytes = countingReceivedBytes
            $0.maximumQueuedWriteBytes = 64 << 20
        }, body)
}

/// The echo on connections whose send buffer stays at 4 KiB (`SO_SNDBUF`; the kernel's own grows
/// to megabytes on loopback): a send then completes each time a slow reader takes a few KiB, as
/// on a network where the buffer has not grown, instead of once a megabyte has drained.
private struct SmallSendBufferEcho: ConnectionHandler {
    func connectionOpened(_ connection: Connection) {
        var size: Int32 = 4096
        setsockopt(connection.handle.descriptor, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        connection.write(bytes)
    }
}
