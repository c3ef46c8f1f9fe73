import RingPort

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

    /// Starts a thread that runs `action` when the next SIGINT or SIGTERM arrives.
    func onNextSignal(_ action: @escaping @Sendable () -> Void) {
        let set = set
        do {
            _ = try PThread(name: "signals", detached: true) {
                var set = set
                var received: Int32 = 0
                while sigwait(&set, &received) != 0 {}
                action()
            }
        } catch {
            // Without the thread a second signal cannot force the shutdown; the first still works.
        }
    }
}
