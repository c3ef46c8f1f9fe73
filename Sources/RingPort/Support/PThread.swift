import CLiburing
import Glibc
import Synchronization

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
        let result =
            PThread.takeInjectedCreationFailure()
            ? EAGAIN
            : pthread_create(
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

    /// Runs `body` on a new detached thread named `name`; returns nil then. When no thread can
    /// be created, returns the error and runs `body` anyway:
    /// - on the calling thread (blocking it until `body` returns), unless it is a worker of a
    ///   ``WorkerPool``;
    /// - on Swift's global concurrent executor when the calling thread is a pool worker, since
    ///   the work this is for (a shutdown that stops the pools) waits for every worker to stop,
    ///   the calling one included. Then this returns before `body` has run.
    ///
    /// For blocking work (a shutdown that waits for operations to drain) started from a task,
    /// which must not hold a thread of Swift's cooperative pool.
    @discardableResult
    package static func runDetached(name: String, _ body: @escaping @Sendable () -> Void) -> RingPortError? {
        do {
            _ = try PThread(name: name, detached: true, body: body)
            return nil
        } catch {
            if CompletionWorker.poolWorkerOfCallingThread != nil {
                Task.detached { body() }
            } else {
                body()
            }
            return error
        }
    }

    /// Test seam: 0 (the default) creates threads as asked; `n` > 0 makes the `n`th thread
    /// creation from now fail with `EAGAIN`, as it does when the process is out of threads (the
    /// ones before it succeed, the count is back at 0 after it).
    package static let creationFailureCountdown = Atomic<Int>(0)

    private static func takeInjectedCreationFailure() -> Bool {
        var remaining = creationFailureCountdown.load(ordering: .relaxed)
        while remaining > 0 {
            let (exchanged, current) = creationFailureCountdown.compareExchange(
                expected: remaining, desired: remaining - 1, ordering: .relaxed)
            if exchanged { return remaining == 1 }
            remaining = current
        }
        return false
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

    /// Lets the thread free its resources when it ends, instead of being joined (for a thread
    /// that may never end in time). Called at most once, instead of ``join()``.
    package func detach() {
        pthread_detach(thread)
    }
}
