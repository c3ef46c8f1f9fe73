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
        final class Box: Sendable {
            let action: @Sendable () -> Void
            init(_ action: @escaping @Sendable () -> Void) { self.action = action }
        }
        var thread = pthread_t()
        let box = Unmanaged.passRetained(Box(action))
        pthread_create(&thread, nil, { argument in
            let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGINT)
            sigaddset(&set, SIGTERM)
            var received: Int32 = 0
            while sigwait(&set, &received) != 0 {}
            box.action()
            return nil
        }, box.toOpaque())
        pthread_detach(thread)
    }
}
