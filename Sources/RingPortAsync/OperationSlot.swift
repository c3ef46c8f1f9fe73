import RingPort

/// One reusable asynchronous operation of a connection or a listener: its per-I/O context and
/// the task waiting for the context's completion.
///
/// ## Protocol
/// A task *claims* the slot (``claim(_:)``), performs one or more operations with it
/// (``perform(_:)``), and *relinquishes* it. Between claim and relinquish the slot and its
/// context belong to that task, except while an operation is posted: then the completion port
/// owns the context (and keeps it alive) until the operation's completion is dequeued by a
/// worker, which calls ``complete(_:)``. ``perform(_:)`` returns only after that, also when the
/// task is cancelled, so the context's buffer is never reused, freed, or read early.
///
/// ## Cancellation
/// Task cancellation while an operation is posted asks the port to cancel it
/// (`CompletionPort.cancel`, an io_uring `ASYNC_CANCEL`). The operation's completion still
/// arrives — `ECANCELED` if the cancellation won, the real result if the operation finished
/// first — and ``perform(_:)`` reports it together with the fact that cancellation was
/// requested. What to do with a result that arrived anyway is the caller's decision.
final class OperationSlot: @unchecked Sendable {
    // @unchecked: `waiter` is guarded by its lock. `context` is an immutable reference; the
    // context itself is touched only by the task that claimed the slot (the claim is taken and
    // released under the lock, which orders those tasks), by the port while an operation is
    // posted, and by the worker that dequeued its completion, before it resumes the task. The
    // owner's bookkeeping fields below follow the same rule as the context.

    /// The per-I/O context every operation of this slot is posted with.
    let context: IOContext
    let port: CompletionPort
    private let waiter = LockedValue(Waiter())

    /// Bookkeeping of the claimant (touched only between claim and relinquish): the buffered
    /// bytes of a connection's reads (`bufferedStart..<bufferedEnd` of the context's buffer)
    /// and whether the peer closed its side.
    var bufferedStart = 0
    var bufferedEnd = 0
    var endOfStream = false

    private struct Waiter {
        var claimed = false
        var posted = false
        var cancelRequested = false
        var continuation: UnsafeContinuation<Outcome, Never>?
    }

    /// How one ``perform(_:)`` ended.
    enum Outcome: Sendable {
        /// The operation completed; `cancelRequested` says whether the task was cancelled while
        /// it was in flight (or before it was posted, which cannot happen here).
        case completed(Completion, cancelRequested: Bool)
        /// The task was cancelled before the operation was posted: nothing was posted.
        case cancelledBeforePosting
        /// Posting failed: nothing was posted.
        case notPosted(RingPortError)
    }

    init(port: CompletionPort, context: IOContext) {
        self.port = port
        self.context = context
        context.userValue = AsyncPort.CompletionTarget.operationSlot.rawValue
    }

    /// Takes the slot for the calling task.
    ///
    /// - Throws: `RingPortError.Code.contextInFlight` when another task holds it (two reads,
    ///   two writes or two accepts at once on one object).
    func claim(_ operation: @autoclosure () -> String) throws(RingPortError) {
        let taken = waiter.withLock { waiter -> Bool in
            guard !waiter.claimed else { return false }
            waiter.claimed = true
            waiter.cancelRequested = false
            return true
        }
        guard taken else {
            throw RingPortError(.contextInFlight, operation: "\(operation()): another task is already doing this")
        }
    }

    /// Gives the slot back (nothing of it is in flight any more).
    func relinquish() {
        waiter.withLock { $0.claimed = false }
    }

    /// Posts one operation with `post` and waits for its completion. The caller holds the claim.
    ///
    /// `post` runs under the slot's lock, with the context, and must post exactly one operation
    /// with it or throw.
    func perform(_ post: (IOContext) throws(RingPortError) -> Void) async -> Outcome {
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Outcome, Never>) in
                let immediate = waiter.withLock { waiter -> Outcome? in
                    if waiter.cancelRequested { return .cancelledBeforePosting }
                    // The worker finds the slot through the context; the link is cut in
                    // `complete`, so no cycle outlives the operation.
                    context.attachment = self
                    do throws(RingPortError) {
                        try post(context)
                    } catch {
                        context.attachment = nil
                        return .notPosted(error)
                    }
                    waiter.posted = true
                    waiter.continuation = continuation
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            // Any thread, possibly while the task is between claim and post; the lock orders
            // this with posting and completing, so only this slot's current operation is
            // cancelled, never a later one that reuses the context.
            waiter.withLock { waiter in
                waiter.cancelRequested = true
                if waiter.posted {
                    // An error here means the ring no longer accepts submissions; the port then
                    // cancels everything when it closes, so the completion still arrives.
                    _ = try? port.cancel(context)
                }
            }
        }
    }

    /// The operation's completion was dequeued (a worker thread): resumes the waiting task.
    func complete(_ completion: Completion) {
        context.attachment = nil
        let (continuation, cancelRequested) = waiter.withLock { waiter in
            defer {
                waiter.posted = false
                waiter.continuation = nil
            }
            return (waiter.continuation, waiter.cancelRequested)
        }
        continuation?.resume(returning: .completed(completion, cancelRequested: cancelRequested))
    }
}

extension OperationSlot.Outcome {
    /// The completion of an operation that carries no error, and whether cancellation was
    /// requested while it was in flight (its result arrived anyway: the caller decides what to
    /// keep). Throws `CancellationError` when the task was cancelled before posting or the
    /// cancellation won, the posting error when nothing was posted, ``RingPortError/Code/handleClosed``
    /// (`closed` says what) when the operation was cancelled because its handle closed, and
    /// ``RingPortError/Code/systemCallFailed`` with the errno (`failed` says what) otherwise.
    func completionWithoutError(
        closed: @autoclosure () -> String, failed: @autoclosure () -> String
    ) throws -> (completion: Completion, cancelRequested: Bool) {
        switch self {
        case .cancelledBeforePosting:
            throw CancellationError()
        case .notPosted(let error):
            throw error
        case .completed(let completion, let cancelRequested):
            if let error = completion.error {
                if completion.isCancelled {
                    if cancelRequested { throw CancellationError() }
                    throw RingPortError(.handleClosed, operation: closed())
                }
                throw RingPortError(.systemCallFailed, operation: failed(), errno: error)
            }
            return (completion, cancelRequested)
        }
    }
}
