import CLiburing

/// A ring's submission and completion queues: the boundary between a ``Ring`` and what performs
/// its operations.
///
/// The contract is io_uring's own. The ring prepares `io_uring_sqe`s (opcode, descriptor, buffer,
/// `user_data`), publishes them, enters to have them performed and to wait, and reaps
/// `io_uring_cqe`s that carry each `user_data` back with a result. Two backends fulfil it:
///
/// - ``IOURing``: the kernel's io_uring instance, where the queues are shared memory;
/// - ``EpollRing``: the same queues in user space, performed over epoll readiness (the fallback
///   where io_uring is refused).
///
/// Everything above this boundary — the in-flight table, per-handle serialisation, leadership,
/// cancellation, the server — is the same for both.
///
/// ## Threads
/// Preparing and publishing (``nextSubmissionEntry()``, ``flushSubmissions()``) and reaping
/// (``peekCompletions(into:)``, ``advanceCompletions(by:)``) are serialised by the caller (the
/// ring's lock). ``enter(toSubmit:waitFor:timeout:)`` may run without that lock, concurrently
/// with them and with itself; each backend serialises its own side.
///
/// This is an abstract class (its two subclasses are final): a `let` of a class type dispatches
/// through the class's table without reference counting, which an existential may not.
class RingQueues {
    /// The name ``CompletionPort/Backend`` gives this backend.
    let backend: CompletionPort.Backend
    /// Submission queue size: how many SQEs can wait to be published.
    let submissionEntries: UInt32
    /// Completion queue size (beyond it, completions wait in an overflow list; none is lost).
    let completionEntries: UInt32

    init(backend: CompletionPort.Backend, submissionEntries: UInt32, completionEntries: UInt32) {
        self.backend = backend
        self.submissionEntries = submissionEntries
        self.completionEntries = completionEntries
    }

    /// Whether a request stays bound to the thread that submitted it (io_uring runs its completion
    /// work there), so that a new leader thread must submit the long-lived ones again
    /// (``Ring``'s migration after a takeover).
    var bindsRequestsToSubmitter: Bool { fatalError("abstract") }

    /// Whether operations progress without a thread entering (io_uring: the kernel completes them
    /// by itself; epoll: only an ``enter(toSubmit:waitFor:timeout:)`` performs them).
    var completesWithoutEntering: Bool { fatalError("abstract") }

    /// Whether the queues are set up (not yet torn down by ``close()``).
    var isOpen: Bool { fatalError("abstract") }

    /// Tears the queues down. Nothing may touch them afterwards; the caller serialises this with
    /// every other use.
    func close() { fatalError("abstract") }

    // MARK: Submission side (caller serialises)

    /// The next free SQE, or nil when the submission queue is full. The entry is not performed
    /// before ``flushSubmissions()`` published it and an ``enter(toSubmit:waitFor:timeout:)``.
    func nextSubmissionEntry() -> UnsafeMutablePointer<io_uring_sqe>? { fatalError("abstract") }

    /// Publishes prepared SQEs and returns how many are published and not yet consumed.
    func flushSubmissions() -> UInt32 { fatalError("abstract") }

    /// SQEs prepared but not yet published.
    var unpublishedSubmissions: UInt32 { fatalError("abstract") }

    /// A descriptor was associated with the port: whatever the backend remembers about an earlier
    /// descriptor with the same number is stale.
    func descriptorAssociated(_ descriptor: Int32) {}

    // MARK: Entering (may run concurrently with the rest)

    /// Performs up to `toSubmit` published SQEs and, if `waitFor` > 0, waits until that many
    /// completions are visible or `timeout` (nanoseconds) passes.
    ///
    /// - Returns: the number of SQEs consumed, or a negated errno (`-ETIME` on timeout, `-EINTR`
    ///   when interrupted, `-EBUSY` / `-EAGAIN` when completions must be reaped first).
    func enter(toSubmit: UInt32, waitFor: UInt32, timeout: UInt64?) -> Int32 { fatalError("abstract") }

    // MARK: Completion side (caller serialises)

    /// Fills `buffer` with pointers to visible CQEs and returns how many. The CQEs stay valid
    /// until ``advanceCompletions(by:)``.
    func peekCompletions(into buffer: UnsafeMutableBufferPointer<UnsafeMutablePointer<io_uring_cqe>?>) -> Int {
        fatalError("abstract")
    }

    /// Marks `count` CQEs as consumed.
    func advanceCompletions(by count: Int) { fatalError("abstract") }

    /// Completions dropped because no memory was left to keep them (should stay 0).
    var droppedCompletions: UInt32 { fatalError("abstract") }
}
