import DequeModule
import Glibc
import RingPort
import Synchronization

/// A task executor whose jobs run on an ``AsyncPort``'s worker threads.
///
/// A task that prefers it (`withTaskExecutorPreference(port.executor)`,
/// `Task(executorPreference: port.executor)`, or ``AsyncPort/preferredExecutor``) is resumed
/// where its I/O completes: the worker that dequeued the completion resumes the task's
/// continuation, the task's job lands in that thread's run list instead of the global
/// executor's queue, and the worker runs it as soon as the completion's handler returns —
/// before it dequeues the next completion. The operations the task posts then come from the
/// ring's leader itself, so they are queued without waking anybody.
///
/// Jobs enqueued from other threads (a new task, a task resumed by something else) go to a
/// shared queue and wake a worker with a user completion posted on the port
/// (`PostQueuedCompletionStatus`).
///
/// Jobs run on the workers like completion handlers do: a job that blocks the thread delays
/// the ring's other completions until a standby worker takes the ring over (the port's stall
/// threshold). Keep blocking work off this executor. At most ``inlineJobLimit`` jobs run after
/// one completion; the rest go through the shared queue, so a task that yields in a loop cannot
/// monopolise a worker.
///
/// After the port shuts down, jobs go to Swift's global concurrent executor: a task that still
/// prefers this executor keeps running, elsewhere.
///
/// Thread-safety: ``enqueue(_:)`` may be called from any thread.
public final class PortTaskExecutor: TaskExecutor, Sendable {
    /// Jobs run after one completion before the rest is handed to the shared queue.
    public static let inlineJobLimit = 64

    /// The posted value that marks a wake-up of the shared queue.
    static let wakeUpValue: UInt64 = 0x5241_5359_4E43_4A42  // "RASYNCJB"

    private let port: CompletionPort
    private let shared = LockedValue(SharedQueue())
    /// Set by ``stop()``, on the stopping thread, after the workers exited; read by that thread
    /// when it handles what they left (``attachCurrentThread()``).
    private let isStopped = Atomic<Bool>(false)

    private struct SharedQueue {
        var jobs = Deque<UnownedJob>()
        /// A wake-up completion is posted and not yet handled: no need for another.
        var wakeUpPending = false
        /// The workers are gone: jobs go to the global executor.
        var stopped = false
    }

    init(port: CompletionPort) {
        self.port = port
    }

    /// Queues a job. On one of this executor's workers, while it handles a completion, the job
    /// runs on that thread right after the handler; elsewhere it goes to the shared queue.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if let local = WorkerJobs.current {
            // The thread's worker keeps its instance while the thread runs: borrowed, not retained.
            let queuedHere = local._withUnsafeGuaranteedRef { local in
                guard local.executor == ObjectIdentifier(self) else { return false }
                local.jobs.append(job)
                return true
            }
            if queuedHere { return }
        }
        enqueueShared(CollectionOfOne(job))
    }

    private func enqueueShared(_ jobs: some Collection<UnownedJob>) {
        let action = shared.withLock { queue -> SharedAction in
            if queue.stopped { return .runElsewhere }
            queue.jobs.append(contentsOf: jobs)
            if queue.wakeUpPending { return .none }
            queue.wakeUpPending = true
            return .wakeUp
        }
        switch action {
        case .none:
            break
        case .wakeUp:
            do {
                try port.post(value: PortTaskExecutor.wakeUpValue)
            } catch {
                // The port is closing: nobody would dequeue the wake-up. Run the jobs elsewhere
                // rather than never.
                let stranded = shared.withLock { queue in
                    queue.wakeUpPending = false
                    defer { queue.jobs.removeAll() }
                    return Array(queue.jobs)
                }
                stranded.forEach(Self.runElsewhere)
            }
        case .runElsewhere:
            jobs.forEach(Self.runElsewhere)
        }
    }

    private enum SharedAction { case none, wakeUp, runElsewhere }

    private static func runElsewhere(_ job: UnownedJob) {
        globalConcurrentExecutor.enqueue(ExecutorJob(job))
    }

    // MARK: Worker side

    /// Marks the calling worker thread as this executor's (so that jobs resumed from its
    /// handler stay on it) and returns its run list, unretained: the thread's pool worker keeps
    /// it until the worker's loop ends. nil on a thread that is no pool worker, such as the one
    /// that handles what the workers left after ``stop()`` (the jobs it resumes go to the global
    /// executor), and after ``stop()`` in any case.
    func attachCurrentThread() -> Unmanaged<WorkerJobs>? {
        guard !isStopped.load(ordering: .relaxed) else { return nil }
        let local = WorkerJobs.forCurrentThread()
        local?._withUnsafeGuaranteedRef { $0.executor = ObjectIdentifier(self) }
        return local
    }

    /// Runs the jobs of the shared queue (a wake-up completion was dequeued).
    func runSharedJobs() {
        let jobs = shared.withLock { queue in
            queue.wakeUpPending = false
            defer { queue.jobs.removeAll(keepingCapacity: true) }
            return Array(queue.jobs)
        }
        let executor = asUnownedTaskExecutor()
        for job in jobs {
            job.runSynchronously(on: executor)
        }
    }

    /// Runs the jobs the handler resumed on this thread, up to ``inlineJobLimit``; hands the
    /// rest to the shared queue.
    func runLocalJobs(_ local: WorkerJobs) {
        guard !local.jobs.isEmpty else { return }
        let executor = asUnownedTaskExecutor()
        var budget = PortTaskExecutor.inlineJobLimit
        while let job = local.jobs.popFirst() {
            job.runSynchronously(on: executor)
            budget -= 1
            if budget == 0 && !local.jobs.isEmpty {
                let rest = local.jobs
                local.jobs.removeAll()
                enqueueShared(rest)
                return
            }
        }
    }

    /// The workers have stopped: sends what is queued, and every later job, to the global
    /// executor.
    func stop() {
        isStopped.store(true, ordering: .relaxed)
        let stranded = shared.withLock { queue in
            queue.stopped = true
            defer { queue.jobs.removeAll() }
            return Array(queue.jobs)
        }
        stranded.forEach(Self.runElsewhere)
    }
}

/// What one worker thread keeps for itself: the jobs resumed while it handled a completion,
/// run by the same thread before it dequeues again, the byte buffers it recycles
/// (``ByteBufferCache``), and the contexts of single sends (`ContextCache`).
///
/// Thread-confined: created for a worker of a port's pool on first use, kept by that worker
/// (`CompletionWorker.ownerState(_:orMake:)`), and freed with it when its thread's loop ends.
/// Other threads have none. Not `Sendable`, and never handed to another thread.
final class WorkerJobs {
    /// The executor whose worker this thread is (nil: not a worker of any).
    // @exclusivity(unchecked): thread-confined (see above), so the dynamic exclusivity checks
    // guard nothing; they cost an access-set insertion per message.
    @exclusivity(unchecked) var executor: ObjectIdentifier?
    @exclusivity(unchecked) var jobs = Deque<UnownedJob>()
    @exclusivity(unchecked) var buffers = ByteBufferCache()
    /// The bare contexts (capacity 0) of single sends, between a send's completion and the next
    /// send from this thread: no pool lock for either.
    @exclusivity(unchecked) var bareContexts = ContextCache(limit: 16)

    private init() {
        jobs.reserveCapacity(16)
    }

    /// The calling thread's instance, if it is a pool worker that has one (kept by the worker:
    /// valid on this thread while it runs the pool's loop).
    @inline(__always)
    static var current: Unmanaged<WorkerJobs>? {
        CompletionWorker.ownerStateOfCallingThread(WorkerJobs.self)
    }

    /// The calling thread's instance, created on first use, when the thread is a pool's worker;
    /// nil on any other thread.
    static func forCurrentThread() -> Unmanaged<WorkerJobs>? {
        CompletionWorker.ownerStateOfCallingThread(WorkerJobs.self) { WorkerJobs() }
    }
}
