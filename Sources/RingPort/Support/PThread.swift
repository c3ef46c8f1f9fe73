import CLiburing
import Glibc

/// A POSIX thread running a closure: RingPort's workers, and the few threads of the `ringport`
/// tool (package access).
///
/// Thread-safety: ``join()`` must be called once, from one thread; a detached thread is never
/// joined.
package struct PThread {
    private let thread: pthread_t

    /// Starts a thread named `name` (truncated to 15 bytes, the kernel's limit) running `body`.
    /// The new thread owns the closure and releases it when `body` returns. A `detached`
    /// thread's resources are freed when it ends; it cannot be joined.
    ///
    /// The thread blocks the asynchronous signals a process is sent (``blockedSignals``): they
    /// are the application's to take (a `sigwait` loop, a signal source), on its own threads,
    /// never on a RingPort worker that happened to be picked by the kernel.
    package init(name: String, detached: Bool = false, body: @escaping @Sendable () -> Void) throws(RingPortError) {
        final class Box {
            let name: String
            let body: @Sendable () -> Void
            init(name: String, body: @escaping @Sendable () -> Void) {
                self.name = name
                self.body = body
            }
        }
        let box = Unmanaged.passRetained(Box(name: name, body: body))
        var thread = pthread_t()
        // The new thread inherits the mask in effect here: block, create, restore.
        var blocked = PThread.blockedSignals
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        let result = pthread_create(
            &thread, nil,
            { argument in
                // Ownership of the box passes to the new thread, which releases it.
                let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
                CLiburing_set_thread_name(box.name)
                box.body()
                return nil
            }, box.toOpaque())
        guard result == 0 else {
            box.release()
            throw RingPortError(.systemCallFailed, operation: "pthread_create \(name)", errno: .init(rawValue: result))
        }
        if detached { pthread_detach(thread) }
        self.thread = thread
    }

    /// Runs `body` on a new detached thread named `name`, or, when no thread can be created,
    /// on the calling thread (blocking it until `body` returns); returns the error in that case.
    /// For blocking work (a shutdown that waits for operations to drain) started from a task,
    /// which must not hold a thread of Swift's cooperative pool.
    @discardableResult
    package static func runDetached(name: String, _ body: @escaping @Sendable () -> Void) -> RingPortError? {
        do {
            _ = try PThread(name: name, detached: true, body: body)
            return nil
        } catch {
            body()
            return error
        }
    }

    /// The signals RingPort's threads block: SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2.
    static var blockedSignals: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2] {
            sigaddset(&set, signal)
        }
        return set
    }

    /// Waits for the thread to finish.
    package func join() {
        pthread_join(thread, nil)
    }
}
