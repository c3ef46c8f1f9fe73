import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import Testing

// A leader that is runnable — busy, or preempted because the load client shares the two cores —
// is never taken over: only a leader blocked in a handler is (RingLeadership). Run by
// `make stress` (the filter StressTests matches this suite); 30 s of load.

extension IntegrationTests {
    @Suite(.enabled(if: ProcessInfo.processInfo.environment["RINGPORT_STRESS"] == "1"))
    struct StressTestsPreemptedLeader {
        /// `ringport echo` (6 workers on one ring) under 30 s of `ringport load` at 1,000
        /// connections, both unpinned on the same cores: the echo handler never blocks, so the
        /// shutdown summary counts no takeover, and every echoed byte was right.
        @Test(.timeLimit(.minutes(2)))
        func thirtySecondsOfLoadOnSharedCoresCauseNoTakeover() throws {
            raiseDescriptorLimitForStress()
            // At notice level a takeover logs where the leader was blocked.
            let server = try RunningRingport(["echo", "--port", "0", "--log-level", "notice"])
            defer { if server.process.isRunning { server.terminate() } }
            let load = try FinishedLoad(
                [
                    "--port", "\(server.address.port)", "--connections", "1000", "--size", "128", "--duration", "30",
                    "--warmup", "1", "--json",
                ],
                timeout: .seconds(90))
            #expect(load.status == 0, "\(load.errors)")
            let messages = load.json?["msgs"] as? Int ?? 0
            #expect(messages > 100_000, "\(load.output)")
            #expect(load.json?["errors"] as? Int == 0, "\(load.output)")
            server.terminate()
            let summary = try #require(server.summary)
            #expect(
                summary.contains(" 0 leader takeovers,"),
                "\(summary); \(server.logLines.all.filter { $0.contains("no progress") })")
            #expect(summary.hasSuffix(" 0 lost"), "\(summary)")
            print(
                """
                STRESS 30 s of ringport load, 1000 connections × 128 B on the shared cores: \(messages) messages, \
                0 errors; \(summary)
                """
            )
        }
    }
}
