#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// SIGINT and SIGTERM, blocked in every thread and accepted synchronously by the main thread.
///
/// Call ``block()`` before any thread is started (in particular before the event loop group is
/// created): threads inherit the signal mask, so no event loop thread ever takes these signals
/// and ``wait()`` on the main thread sees them all.
struct TerminationSignals {
    private var set = sigset_t()

    /// Blocks SIGINT and SIGTERM in the calling thread and in the threads it starts from now on.
    static func block() -> TerminationSignals {
        var signals = TerminationSignals()
        sigemptyset(&signals.set)
        sigaddset(&signals.set, SIGINT)
        sigaddset(&signals.set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &signals.set, nil)
        return signals
    }

    /// Waits until SIGINT or SIGTERM is pending and accepts it; returns the signal number.
    func wait() -> Int32 {
        var set = self.set
        var signal: Int32 = 0
        let result = sigwait(&set, &signal)
        precondition(result == 0, "sigwait failed: \(result)")  // only fails for an invalid set
        return signal
    }
}
