#if canImport(Glibc)
import Glibc
#endif

/// SIGINT and SIGTERM, taken synchronously with `sigwait` instead of a handler.
///
/// Create it on the main thread before any other thread starts: it blocks both signals, and
/// threads started afterwards inherit the mask, so only ``wait()`` receives them. SIGPIPE is
/// ignored (RingPort sends with MSG_NOSIGNAL; this covers anything else).
struct ShutdownSignals {
    private var set = sigset_t()

    init() {
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Blocks until SIGINT or SIGTERM arrives and returns it.
    func wait() -> Int32 {
        var set = set
        var received: Int32 = 0
        while sigwait(&set, &received) != 0 {}
        return received
    }

    /// Starts a thread that exits the process at once (status 130) on the next signal, for a
    /// user who does not want to wait for a graceful shutdown.
    func exitOnNextSignal() {
        var thread = pthread_t()
        pthread_create(&thread, nil, { _ in
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGINT)
            sigaddset(&set, SIGTERM)
            var received: Int32 = 0
            while sigwait(&set, &received) != 0 {}
            _exit(130)
        }, nil)
        pthread_detach(thread)
    }
}
