import RingPort
import SystemPackage
import Testing

extension RingPortTests {
    /// The one accept back-off the server and the async listener share.
    @Suite struct AcceptBackoffTests {
        @Test(arguments: [Errno.connectionAbort, .interrupted, .notPermitted, .protocolError])
        func errorsOfOneConnectionAcceptAgainAtOnce(error: Errno) {
            #expect(AcceptBackoff().delay(after: error) == nil)
        }

        @Test func aBurstOfFailuresIsOneStepAndStepsDoubleUpToOneSecond() throws {
            let backoff = AcceptBackoff()
            let start = MonotonicInstant(nanoseconds: 1_000_000_000)
            let first = try #require(backoff.delay(after: .tooManyOpenFiles, now: start))
            #expect(first.delay == .milliseconds(10) && first.started)
            // Fifteen more accepts of a pool fail within the same step: they wait for what is
            // left of it, and the delay does not grow.
            for offset in 1...15 {
                let later = start.advanced(by: .microseconds(offset * 100))
                let next = try #require(backoff.delay(after: .tooManyOpenFiles, now: later))
                #expect(!next.started)
                #expect(next.delay == .milliseconds(10) - .microseconds(offset * 100))
            }
            // Each failure after a step ended doubles the delay, up to 1 s.
            var now = start.advanced(by: .milliseconds(10))
            var expected = Duration.milliseconds(20)
            for _ in 0..<10 {
                let step = try #require(backoff.delay(after: .tooManyOpenFilesInSystem, now: now))
                #expect(step.delay == expected && !step.started)
                now = now.advanced(by: step.delay)
                expected = min(expected * 2, .seconds(1))
            }
            #expect(backoff.succeeded())
            #expect(!backoff.succeeded(), "the episode ended with the first success")
            let again = try #require(backoff.delay(after: .noMemory, now: now))
            #expect(again.delay == .milliseconds(10) && again.started)
        }
    }
}
