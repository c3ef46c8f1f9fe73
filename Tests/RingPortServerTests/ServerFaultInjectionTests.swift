import Foundation
import Glibc
import RingPort
import RingPortServer
import RingPortTestSupport
import SystemPackage
import Testing

/// The server's branches for each failure, driven by results injected through the kernel's
/// own completion path (see `FaultInjection`): every byte of the unaffected traffic checked.
extension RingPortServerTests {
    @Suite struct ServerFaultInjectionTests {
        /// Faults a connection survives: no buffer (`ENOBUFS`), cancellations nobody asked for,
        /// accepts failing with `EMFILE` or cancelled. Every byte must still be echoed.
        @Test(arguments: ServerMode.allCases, InjectionPath.allCases)
        func recoverableFaultsLoseNoByte(mode: ServerMode, path: InjectionPath) throws {
            let injection = path.injection([
                .init(.accept, error: .canceled, probability: 1, limit: 2),
                .init(.accept, error: .tooManyOpenFiles, probability: 1, limit: 2),
                .init(.read, error: .noBufferSpace, probability: 0.1, limit: 20),
                .init(.read, error: .canceled, probability: 0.1),
                .init(.write, error: .canceled, probability: 0.1),
                .init(.timeout, error: .canceled, probability: 0.5),
            ])
            try withServer(configure: {
                mode.apply(&$0)
                $0.port.faultInjection = injection
            }) { server in
                EchoLoad(connections: 48, messagesPerConnection: 4, maximumMessageSize: 48 * 1024, seed: 3)
                    .expectCleanRun(against: server.localAddress)
                #expect(eventually { server.statistics.open == 0 })
                let counts = injection.injectedCounts
                #expect(counts[0] == 2 && counts[1] == 2, "\(counts)")
                #expect(counts[2] > 0 && counts[3] > 0 && counts[4] > 0, "\(counts)")
                let statistics = server.statistics
                #expect(statistics.accepted == 48)
                #expect(statistics.connectionErrors == 0)
                #expect(statistics.acceptErrors == 2)
                #expect(statistics.bufferExhaustions == counts[2])
                #expect(eventually { server.portStatistics.buffersOutstanding == 0 })
                #expect(server.portStatistics.staleCompletions == 0)
            }
        }

        /// Faults that end a connection (reset, broken pipe, end of stream) end only the
        /// connection hit: the others are served, nothing leaks, and no client sees a wrong byte.
        @Test(arguments: ServerMode.receiveModes, InjectionPath.allCases)
        func fatalFaultsEndOnlyTheConnectionHit(mode: ServerMode, path: InjectionPath) throws {
            let injection = path.injection([
                .init(.read, error: .connectionReset, probability: 0.04),
                .init(.write, error: .brokenPipe, probability: 0.04),
                .init(.read, result: 0, probability: 0.02),
            ])
            try withServer(configure: {
                mode.apply(&$0)
                $0.port.faultInjection = injection
            }) { server in
                let idleOperations = settledOperationsInFlight(server)
                let idleDescriptors = DescriptorSnapshot()
                let result = EchoLoad(connections: 64, messagesPerConnection: 4, maximumMessageSize: 32 * 1024, seed: 5)
                    .run(against: server.localAddress)
                let counts = injection.injectedCounts
                #expect(result.connections == 64 && result.connectFailures == 0)
                #expect(result.mismatches == 0, "a client saw a wrong byte: \(result)")
                #expect(result.unfinished == 0, "a client was left hanging: \(result)")
                #expect(
                    result.prematureCloses > 0 && result.prematureCloses <= counts.reduce(0, +), "\(result) \(counts)")
                #expect(eventually { server.statistics.open == 0 })
                // Each injected error is one connection error; an injected end of stream is none.
                #expect(server.statistics.connectionErrors == counts[0] + counts[1], "\(counts)")
                #expect(server.statistics.closed == 64)
                #expect(eventually { server.portStatistics.operationsInFlight == idleOperations })
                #expect(eventually { idleDescriptors.allClosedAgain }, "still open: \(idleDescriptors.openedSince)")
                #expect(eventually { server.portStatistics.buffersOutstanding == 0 })
                #expect(server.portStatistics.staleCompletions == 0)
            }
        }
    }
}
