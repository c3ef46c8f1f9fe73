import RingPort
import Synchronization

/// A scheduled task of a ``RingPortEventLoop``: an io_uring timeout on the loop's ring whose
/// completion runs the task on the loop.
///
/// Ownership: the timer's context carries it (`attachment`) from the post until the completion,
/// which drops the reference; the `Scheduled` handle holds it for ``cancel(on:)``.
///
/// Thread-safety: ``cancel(on:)`` from any thread; ``complete(_:)`` on the loop, once.
final class LoopTimer: @unchecked Sendable {
    // @unchecked: `fire` is called once, on the loop; the rest is immutable or atomic.

    /// How a timer ends.
    enum Outcome {
        /// Its time came: run the task.
        case due
        /// `Scheduled.cancel()` came first.
        case cancelled
        /// The group shut down before its time.
        case shutDown
    }

    /// The longest delay posted (deadlines further out, such as `NIODeadline.distantFuture`, wait
    /// this long: ten years).
    static let longest = Duration.seconds(10 * 365 * 86_400)

    /// The context that carries the timeout.
    let context = IOContext(capacity: 0)
    private let fire: (Outcome) -> Void
    private let cancelRequested = Atomic<Bool>(false)

    init(fire: @escaping (Outcome) -> Void) {
        self.fire = fire
        context.userValue = CompletionTarget.timer.rawValue
        context.attachment = self
    }

    /// Cancels the timeout: unless the task already started, it will not run and its future
    /// fails with `EventLoopError.cancelled`.
    func cancel(on port: CompletionPort) {
        cancelRequested.store(true, ordering: .relaxed)
        _ = try? port.cancel(context)
    }

    /// The timeout's completion (on the loop).
    func complete(_ completion: Completion) {
        context.attachment = nil
        if cancelRequested.load(ordering: .relaxed) {
            fire(.cancelled)
        } else if completion.isCancelled {
            fire(.shutDown)
        } else {
            fire(.due)
        }
    }
}
