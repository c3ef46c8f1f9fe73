import Glibc
import Logging

/// The worker threads of a completion port: each loops on
/// ``CompletionWorker/dequeue(timeout:)`` and hands every completion to the handler (or, with a
/// batch handler, on ``CompletionWorker/dequeue(into:maximumCount:timeout:)``, a batch at a time).
///
/// By default the pool has ``CompletionPort/Configuration/workerCount`` threads (CPU count × 2 + 2,
/// the classic completion-port rule). Workers are spread over the port's rings; per ring one
/// leads (waits in the kernel and runs handlers) and the rest stand by for when a handler blocks.
///
/// ## The handler
/// Runs on a worker thread (in ``handleRemaining(for:)``, on the thread that calls it, after the
/// workers stopped). It may post operations, close handles, and post user completions.
/// It should return quickly: while it runs, the other completions of its ring wait (for up to
/// the port's stall threshold, after which a standby takes the ring over). Completions of one
/// handle are never handled concurrently.
///
/// ## Lifetime
/// A pool starts once and stops once. The kernel cancels io_uring operations when the thread
/// that submitted them exits, and the workers submit (almost) every operation of their rings:
/// stopping the pool cancels what is still in flight (those completions arrive as cancelled to
/// whoever dequeues next). Stop the pool when the port's work is over, not to pause it.
///
/// Thread-safety: ``start()`` and ``shutdown()`` may be called from any thread, but not from
/// the handler (``shutdown()`` waits for the workers to finish).
public final class WorkerPool: Sendable {
    /// The port the workers dequeue from.
    public let port: CompletionPort
    /// The number of worker threads.
    public let threadCount: Int
    private let name: String
    private let handler: Handler
    private let stopSignal = StopSignal()
    /// The threads, or nil before ``start()``.
    private let threads = LockedValue<[PThread]?>(nil)
    private let logger: Logger

    /// Creates a pool of `threadCount` workers (default: the port's
    /// ``CompletionPort/Configuration/workerCount``) running `handler`. Threads start with
    /// ``start()``.
    public init(
        port: CompletionPort, threadCount: Int? = nil, name: String = "ringport",
        handler: @escaping @Sendable (Completion) -> Void
    ) {
        let count = threadCount ?? port.configuration.workerCount
        precondition(count >= 1, "a worker pool needs at least one thread")
        self.port = port
        self.threadCount = count
        self.name = name
        self.handler = .single(handler)
        logger = port.configuration.logger
    }

    /// Creates a pool of `threadCount` workers (default: the port's
    /// ``CompletionPort/Configuration/workerCount``) that each dequeue up to `maximumBatch`
    /// completions at a time (``CompletionWorker/dequeue(into:maximumCount:timeout:)``) and hand
    /// them to `handler` together, in the order they were dequeued. Threads start with ``start()``.
    ///
    /// A batch costs one pass through the ring's lock instead of one per completion; in exchange
    /// every handle of the batch stays held (its next completions wait) until the handler
    /// returns. The handler must handle every completion of the batch (it may empty the array
    /// as it goes); the pool empties it afterwards, keeping its storage for the next batch.
    public init(
        port: CompletionPort, threadCount: Int? = nil, name: String = "ringport", maximumBatch: Int,
        batchHandler handler: @escaping @Sendable (inout [Completion]) -> Void
    ) {
        let count = threadCount ?? port.configuration.workerCount
        precondition(count >= 1, "a worker pool needs at least one thread")
        precondition(maximumBatch >= 1, "a batch holds at least one completion")
        self.port = port
        self.threadCount = count
        self.name = name
        self.handler = .batch(maximumCount: maximumBatch, handler)
        logger = port.configuration.logger
    }

    /// What a worker does with what it dequeued.
    private enum Handler: Sendable {
        /// One completion at a time.
        case single(@Sendable (Completion) -> Void)
        /// Up to `maximumCount` at a time.
        case batch(maximumCount: Int, @Sendable (inout [Completion]) -> Void)
    }

    /// Starts the threads.
    ///
    /// - Throws: ``RingPortError`` when a thread cannot be created (the threads already started
    ///   are stopped again), or with ``RingPortError/Code/invalidArgument`` when the pool was
    ///   started before.
    public func start() throws(RingPortError) {
        try threads.withLock { (threads: inout [PThread]?) throws(RingPortError) in
            guard threads == nil, !stopSignal.isRequested else {
                throw RingPortError(.invalidArgument, operation: "WorkerPool.start: a pool starts once")
            }
            var started: [PThread] = []
            for index in 0..<threadCount {
                do throws(RingPortError) {
                    started.append(try PThread(name: "\(name)-\(index)") { [self] in run() })
                } catch {
                    stopSignal.request()
                    port.wakeAllWorkers()
                    started.forEach { $0.join() }
                    throw error
                }
            }
            threads = started
        }
    }

    /// Stops the workers: each finishes the completion it is handling and exits; completions not
    /// dequeued yet stay in the port. Waits until every thread has exited, also when another
    /// call is stopping them. Idempotent.
    public func shutdown() {
        // Under the lock, so that a concurrent start() either finished or sees the request, and
        // a concurrent shutdown() returns only once the threads are gone (the workers never
        // take this lock).
        threads.withLock { threads in
            stopSignal.request()
            port.wakeAllWorkers()
            threads?.forEach { $0.join() }
            threads = []
        }
    }

    /// After ``shutdown()`` returned: handles on the calling thread what the workers left, until
    /// the port has nothing in flight and nothing waiting or `timeout` passed. Returns whether
    /// the port went idle; when it did not (the timeout passed, or the port closed meanwhile),
    /// logs what is left, which the port's close drops.
    ///
    /// For a shutdown whose wait for the port to go idle timed out (a handler still busy, or a
    /// completion still to come): the completions still waiting (those of the handles a busy
    /// worker held until it stopped) and those of the operations still in flight reach the
    /// handler here, as they would have on a worker, instead of being dropped by the port's
    /// close — whoever waits on one is answered. The handler runs on the calling thread; the
    /// timeout is checked between its calls (or batches), so a handler that blocks here delays
    /// the return by as long.
    @discardableResult
    public func handleRemaining(for timeout: Duration) -> Bool {
        precondition(
            threads.withLock { $0?.isEmpty == true }, "handleRemaining(for:) is for after shutdown() returned")
        let deadline = MonotonicInstant.now.advanced(by: timeout)
        // Attaching to a ring makes it covered; the worker polls the others (as workers do for
        // rings nobody is attached to).
        let worker = port.makeWorker()
        serve(
            worker, while: { !port.isIdle && MonotonicInstant.now < deadline },
            waitingAtMost: { min(MonotonicInstant.now.duration(to: deadline), .milliseconds(10)) })
        worker.detach()
        guard port.isIdle else {
            let statistics = port.statistics
            logger.error(
                """
                \(name): \(statistics.operationsInFlight) operations still in flight and \
                \(statistics.completionsWaiting) completions waiting after the workers stopped; the port's close \
                drops them
                """
            )
            return false
        }
        return true
    }

    private func run() {
        let worker = port.makeWorker(stopSignal: stopSignal)
        CompletionWorker.setPoolWorkerOfCallingThread(worker)
        defer {
            CompletionWorker.setPoolWorkerOfCallingThread(nil)
            worker.detach()
        }
        serve(worker, while: { !stopSignal.isRequested }, waitingAtMost: { nil })
    }

    /// Dequeues with `worker` and hands what comes to the handler while `proceed()` holds, each
    /// wait bounded by `wait()` (nil: as long as it takes); returns then, or when the port
    /// closed. Logs other errors and goes on.
    @inline(__always)
    private func serve(
        _ worker: CompletionWorker, while proceed: () -> Bool, waitingAtMost wait: () -> Duration?
    ) {
        // The handler is taken out of the enum once: matching it per completion would copy the
        // closure (a retain and a release per completion).
        switch handler {
        case .single(let handle):
            repeatWhile(proceed) { () throws(RingPortError) in
                _ = try worker.dequeue(timeout: wait()) { handle($0) }
            }
        case .batch(let maximumCount, let handle):
            var batch: [Completion] = []
            repeatWhile(proceed) { () throws(RingPortError) in
                if try worker.dequeue(into: &batch, maximumCount: maximumCount, timeout: wait()) > 0 {
                    handle(&batch)
                    batch.removeAll(keepingCapacity: true)
                }
            }
        }
    }

    /// Runs `step` while `proceed()` holds, until the port closes; logs other errors and goes on.
    @inline(__always)
    private func repeatWhile(_ proceed: () -> Bool, _ step: () throws(RingPortError) -> Void) {
        while proceed() {
            do {
                try step()
            } catch {
                if error.code == .portClosed { return }
                logger.error("worker: \(error)")
                // Do not spin on a ring that keeps failing.
                usleep(10_000)
            }
        }
    }
}
