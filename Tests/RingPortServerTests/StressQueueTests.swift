import Foundation
import RingPort
import RingPortServer
import RingPortTestSupport
import Testing

// Kernel-side queue pressure, run by `make stress` with the hostile-client cases (the filter
// StressTests matches this suite too): rings of 2 and 8 submission entries under 500
// connections, so the submission queue is full most of the time and completions pile up behind
// a small completion queue. Nothing may be lost: every byte echoed, every operation submitted
// completed, no stale or dropped completion.

extension RingPortServerTests {
    @Suite(.enabled(if: ProcessInfo.processInfo.environment["RINGPORT_STRESS"] == "1"))
    struct StressTestsQueuePressure {
        @Test(arguments: [(2, 4), (8, 16)], ServerMode.receiveModes)
        func tinyRingsUnderFiveHundredConnectionsLoseNothing(
            queues: (submission: Int, completion: Int), mode: ServerMode
        ) throws {
            raiseDescriptorLimit(to: 4096)
            try withServer(configure: {
                $0.port.ringEntries = UInt32(queues.submission)
                $0.port.completionQueueEntries = UInt32(queues.completion)
                $0.port.ringCount = 1
                $0.port.providedBuffers = .init(count: 64, size: 2048)
                $0.receiveBufferSize = 2048
                mode.apply(&$0)
            }) { server in
                EchoLoad(
                    connections: 500, messagesPerConnection: 4, maximumMessageSize: 32 * 1024, seed: 500,
                    timeout: .seconds(120)
                )
                .expectCleanRun(against: server.localAddress)
                #expect(eventually { server.statistics.open == 0 })
                #expect(server.statistics.accepted == 500)
                #expect(eventually { server.portStatistics.buffersOutstanding == 0 })
                let statistics = server.portStatistics
                #expect(statistics.staleCompletions == 0)
                #expect(statistics.droppedCompletions == 0)
                #expect(
                    statistics.submissionQueueFullEvents > 0,
                    "the load must have filled the \(queues.submission)-entry submission queue")
                #expect(
                    statistics.submittedOperations == statistics.completedOperations
                        + UInt64(statistics.operationsInFlight))
                print(
                    """
                    STRESS rings \(queues.submission)/\(queues.completion) entries, \(mode), 500 connections × 4 \
                    messages ≤ 32 KiB: echoed exactly; \(statistics.submissionQueueFullEvents) SQ-full events, \
                    \(statistics.submittedOperations) submitted = \(statistics.completedOperations) completed + \
                    \(statistics.operationsInFlight) in flight, 0 stale, 0 dropped
                    """
                )
            }
        }
    }
}
