import Foundation
import Glibc
import RingPort
import RingPortServer
import RingPortTestSupport
import Synchronization
import Testing

extension RingPortServerTests {
    @Suite struct EchoServerTests {
        @Test(arguments: ServerMode.allCases)
        func echoesRandomPayloadsExactlyToManyConcurrentClients(mode: ServerMode) throws {
            try withServer(configure: mode.apply) { server in
                EchoLoad(connections: 128, messagesPerConnection: 3, maximumMessageSize: 256 * 1024, seed: 42)
                    .expectCleanRun(against: server.localAddress)
                #expect(eventually { server.statistics.open == 0 })
                #expect(server.statistics.accepted == 128)
            }
        }

        @Test(arguments: ServerMode.allCases)
        func peerCloseAndPeerResetFreeEverything(mode: ServerMode) throws {
            var descriptorsWithIdleServer = DescriptorSnapshot()
            try withServer(configure: mode.apply) { server in
                // Let the workers settle (doorbells armed, accepts submitted).
                let idleOperations = settledOperationsInFlight(server)
                descriptorsWithIdleServer = DescriptorSnapshot()
                let idleHandles = server.portStatistics.openHandles

                var clients: [BlockingClient] = []
                for index in 0..<60 {
                    let client = try BlockingClient(connectingTo: server.localAddress)
                    let message = Array("message \(index)".utf8)
                    try client.send(message)
                    #expect(try client.receive(count: message.count) == message)
                    clients.append(client)
                }
                #expect(eventually { server.statistics.open == 60 })
                // A third close normally, a third reset, a third reset while the server is writing a large reply.
                for (index, client) in clients.enumerated() {
                    switch index % 3 {
                    case 0:
                        client.close()
                    case 1:
                        client.setResetOnClose()
                        client.close()
                    default:
                        try client.send([UInt8](repeating: 7, count: 1 << 20))
                        client.setResetOnClose()
                        client.close()
                    }
                }
                #expect(eventually { server.statistics.open == 0 })
                #expect(server.statistics.closed == 60)
                #expect(eventually { server.portStatistics.openHandles == idleHandles })
                #expect(eventually { server.portStatistics.operationsInFlight == idleOperations })
                #expect(
                    eventually { descriptorsWithIdleServer.allClosedAgain },
                    "still open: \(descriptorsWithIdleServer.openedSince)")
                #expect(eventually { server.portStatistics.buffersOutstanding == 0 })
                #expect(server.portStatistics.staleCompletions == 0)

                // Still serving.
                let client = try BlockingClient(connectingTo: server.localAddress)
                try client.send(Array("still here".utf8))
                #expect(try client.receive(count: 10) == Array("still here".utf8))
                client.close()
            }
        }

        @Test(arguments: ServerMode.allCases)
        func tinyRingsUnderHeavyLoadLoseNothing(mode: ServerMode) throws {
            try withServer(configure: {
                $0.port.ringEntries = 4
                $0.port.completionQueueEntries = 8
                $0.port.ringCount = 1
                $0.port.providedBuffers = .init(count: 64, size: 1024)
                $0.receiveBufferSize = 1024
                mode.apply(&$0)
            }) { server in
                EchoLoad(connections: 300, messagesPerConnection: 4, maximumMessageSize: 16 * 1024, seed: 7)
                    .expectCleanRun(against: server.localAddress)
                #expect(eventually { server.statistics.open == 0 })
                let statistics = server.portStatistics
                #expect(statistics.staleCompletions == 0)
                #expect(statistics.droppedCompletions == 0)
                #expect(
                    statistics.submissionQueueFullEvents > 0, "the load must have filled the 4-entry submission queue")
                #expect(
                    statistics.submittedOperations == statistics.completedOperations
                        + UInt64(statistics.operationsInFlight))
            }
        }

        @Test func shutdownClosesEveryConnectionAndDescriptor() throws {
            let descriptorsBefore = DescriptorSnapshot()
            let server = try TCPServer(configuration: testServerConfiguration(), handler: EchoHandler())
            try server.start()
            var clients: [BlockingClient] = []
            for _ in 0..<20 {
                let client = try BlockingClient(connectingTo: server.localAddress)
                try client.send([1, 2, 3])
                #expect(try client.receive(count: 3) == [1, 2, 3])
                clients.append(client)
            }
            server.shutdown()
            #expect(server.statistics.open == 0)
            // Every client sees end of stream.
            for client in clients {
                #expect(try client.receive(count: 1) == [])
                client.close()
            }
            #expect(descriptorsBefore.allClosedAgain, "still open: \(descriptorsBefore.openedSince)")
        }

        /// A start that fails half-way (the third thread cannot be created): the error says
        /// why, and nothing of the server outlives it. The workers that started have stopped,
        /// the listening socket and the port's descriptors are closed, and the server does not
        /// start again.
        @Test func aStartThatFailsHalfWayLeavesNoThreadOrDescriptor() throws {
            let descriptorsBefore = DescriptorSnapshot()
            var configuration = try testServerConfiguration()
            configuration.label = "halfway"
            configuration.port.workerCount = 4
            let server = try TCPServer(configuration: configuration, handler: EchoHandler())
            let address = server.localAddress
            PThread.creationFailureCountdown.store(3, ordering: .relaxed)
            let error = #expect(throws: RingPortError.self) { try server.start() }
            #expect(error?.code == .systemCallFailed && error?.errno == .resourceTemporarilyUnavailable, "\(error)")
            #expect(PThread.creationFailureCountdown.load(ordering: .relaxed) == 0, "the third creation failed")
            #expect(eventually { threadCount(named: "ringport-halfwa") == 0 }, "server threads still running")
            #expect(descriptorsBefore.allClosedAgain, "still open: \(descriptorsBefore.openedSince)")
            #expect(throws: (any Error).self, "still listening") { try BlockingClient(connectingTo: address) }
            let again = #expect(throws: RingPortError.self) { try server.start() }
            #expect(again?.code == .invalidArgument)
        }

        /// A handler that keeps its worker busy past the shutdown's grace period and timeout: the
        /// connection's close, posted behind it, is handled once the workers stopped (before,
        /// the port's close dropped it and the connection stayed open, with its objects).
        @Test func shutdownClosesAConnectionWhoseHandlerIsBusyPastTheTimeout() throws {
            let descriptorsBefore = DescriptorSnapshot()
            var configuration = try testServerConfiguration()
            configuration.shutdownTimeout = .milliseconds(100)
            let handler = BlockingOnceHandler(blockingFor: 600_000)
            let server = try TCPServer(configuration: configuration, handler: handler)
            try server.start()
            let client = try BlockingClient(connectingTo: server.localAddress)
            try client.send([1, 2, 3])
            #expect(eventually { handler.blocked.load(ordering: .acquiring) })
            server.shutdown(gracePeriod: .milliseconds(100))
            #expect(server.statistics.open == 0)
            #expect(server.statistics.closed == 1)
            // The answer, if it went out before the forced close dropped what was queued; then
            // the end of stream.
            let answer = try client.receive(count: 3)
            #expect(answer == [1, 2, 3] || answer.isEmpty)
            if !answer.isEmpty { #expect(try client.receive(count: 1) == []) }
            client.close()
            #expect(descriptorsBefore.allClosedAgain, "still open: \(descriptorsBefore.openedSince)")
        }
    }
}

/// Echoes, but blocks its worker (a sleep, as in a blocking system call) when the first bytes
/// of the server arrive.
final class BlockingOnceHandler: ConnectionHandler {
    let blocked = Atomic<Bool>(false)
    let microseconds: UInt32

    init(blockingFor microseconds: UInt32) {
        self.microseconds = microseconds
    }

    func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        if !blocked.exchange(true, ordering: .acquiringAndReleasing) { usleep(microseconds) }
        connection.write(bytes)
    }
}
