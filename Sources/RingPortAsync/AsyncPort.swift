import Glibc
import Logging
import RingPort
import Synchronization
import SystemPackage

/// A completion port whose completions resume Swift tasks: the runtime under ``TCPListener``
/// and ``TCPConnection``.
///
/// It owns a `CompletionPort` and a `WorkerPool` whose handler resumes the task waiting for
/// each completion, and a ``PortTaskExecutor`` that runs tasks on those same workers. Every
/// read, write, accept and connect carries an `IOContext` that the port owns from the post
/// until its completion is dequeued; the awaiting call returns only after that.
///
/// ## Where tasks run
/// A task that prefers ``executor`` (or ``preferredExecutor``, which follows
/// ``Configuration/resumption``) runs on the port's worker threads and is resumed on the worker
/// that handled its completion, without a thread hop. Any other task is resumed on its own
/// executor (the global concurrent one for plain tasks): the worker resumes the continuation
/// and the task continues on another thread.
///
/// ## Thread-safety and lifetime
/// All members may be called from any thread or task. Call ``shutdown()`` once the port's work
/// is over: it fails every pending operation (their completions arrive as cancelled), waits for
/// them, stops the workers and closes the port. Dropping the last reference without a shutdown
/// leaves the workers running (they hold the port).
public final class AsyncPort: Sendable {
    /// How to build an ``AsyncPort``.
    public struct Configuration: Sendable {
        /// The completion port: rings, ring sizes, worker count (`CompletionPort.Configuration.workerCount`).
        /// Its provided buffers (1,024 of 16 KiB per ring by default) are what connections
        /// receive into; with none (`nil`), or where the kernel has no multishot receive (and on
        /// the epoll backend), each connection receives into a buffer of its own of
        /// ``receiveBufferSize`` bytes instead.
        public var port: CompletionPort.Configuration = {
            var port = CompletionPort.Configuration()
            port.providedBuffers = .init(count: 1024, size: 16384)
            return port
        }()
        /// Where ``AsyncPort/preferredExecutor`` puts tasks. Default: ``Resumption/portWorkers``,
        /// which measured faster (see `docs/ARCHITECTURE.md`).
        public var resumption = Resumption.portWorkers
        /// Bytes of each connection's own receive buffer when it cannot receive into provided
        /// buffers (see ``port``): the most one arrival delivers then.
        public var receiveBufferSize = 16384
        /// Received bytes a connection buffers while its reader lags: at this many it stops
        /// receiving, and receives again once the reader took them below half of it.
        public var inboundHighWatermark = 65536
        /// Bytes a connection queues for sending: at this many a write waits until the sends
        /// brought the queue below half of it (a peer that does not read stops the writer).
        public var outboundHighWatermark = 65536
        /// How long ``AsyncPort/shutdown()`` waits for the completions of the handles it closed
        /// before it stops the workers. A task that keeps a worker busy longer (blocking it)
        /// delays the stop until it returns; what is left then is handled on the stopping thread.
        public var shutdownTimeout = Duration.seconds(10)
        /// Where the async layer logs (accept failures it retries).
        public var logger = Logger(label: "ringport.async")

        /// The defaults.
        public init() {}
    }

    /// Where tasks of ``AsyncPort/preferredExecutor`` run.
    public enum Resumption: Hashable, Sendable {
        /// On the port's worker threads (``AsyncPort/executor``): a completion resumes its task
        /// on the thread that dequeued it.
        case portWorkers
        /// On Swift's global concurrent executor: a completion resumes its task there, which
        /// costs a thread hop per completion.
        case globalExecutor
    }

    /// The completion port: for its statistics, its features, and calls that complete nothing
    /// (`associate`, `close`). The port's workers dequeue every completion for the async layer
    /// and drop those of operations it did not post (an accepted descriptor is closed, a
    /// received buffer released): post your own operations on a port of your own. The async
    /// layer's handles and contexts are its own (do not post on them).
    public let port: CompletionPort
    /// The task executor on the port's worker threads.
    public let executor: PortTaskExecutor
    /// The configuration the port was built with.
    public let configuration: Configuration
    let logger: Logger
    /// Whether connections receive into the port's provided buffers (multishot receives).
    let usesProvidedBuffers: Bool
    /// Every connection's receive and send watermarks (kept here, not in each connection).
    let inboundWatermarks: Watermarks
    let outboundWatermarks: Watermarks
    /// The contexts of the connections' receives: without a buffer when they receive into
    /// provided buffers, with one of ``Configuration/receiveBufferSize`` bytes otherwise.
    let receiveContexts: ContextPool
    /// The contexts of gathered sends, for the time of a send: their buffer holds the I/O vector.
    let gatherContexts: ContextPool
    /// Contexts of capacity 0 (accepts, connects, single sends).
    let bareContexts = ContextPool(bufferSize: 0)
    /// The byte buffers moving between the workers' caches.
    let bufferDepot = ByteBufferDepot()
    /// Trims the pools and returns free memory to the system after bursts of connections.
    let memorySweep: IdleMemorySweep
    private let workers: WorkerPool
    private let state = Atomic<UInt8>(AsyncPort.running)
    private static let running: UInt8 = 0
    private static let stopping: UInt8 = 1
    private static let stopped: UInt8 = 2

    /// Creates the port and starts its workers.
    ///
    /// - Throws: `RingPortError` when io_uring is unavailable (see `CompletionPort.init(configuration:)`),
    ///   a size is out of range, or a worker thread cannot start.
    public init(configuration: Configuration = .init()) throws(RingPortError) {
        guard configuration.receiveBufferSize >= 1, configuration.inboundHighWatermark >= 1,
            configuration.outboundHighWatermark >= 1
        else {
            throw RingPortError(
                .invalidArgument, operation: "AsyncPort buffer sizes and watermarks must be at least 1 byte")
        }
        self.configuration = configuration
        inboundWatermarks = Watermarks(high: configuration.inboundHighWatermark)
        outboundWatermarks = Watermarks(high: configuration.outboundHighWatermark)
        logger = configuration.logger
        let port = try CompletionPort(configuration: configuration.port)
        let executor = PortTaskExecutor(port: port)
        self.port = port
        self.executor = executor
        usesProvidedBuffers = port.supportsMultishotReceive && port.features.multishotReceive
        receiveContexts = ContextPool(bufferSize: usesProvidedBuffers ? 0 : configuration.receiveBufferSize)
        gatherContexts = ContextPool(bufferSize: AsyncPort.gatheredBuffers * MemoryLayout<iovec>.stride)
        memorySweep = IdleMemorySweep(pools: [receiveContexts, gatherContexts, bareContexts], depot: bufferDepot)
        let depot = bufferDepot
        workers = WorkerPool(port: port, name: "ringport-async") { completion in
            AsyncPort.handle(completion, executor: executor, depot: depot)
        }
        do {
            try workers.start()
        } catch {
            port.close()
            throw error
        }
        memorySweep.start()
    }

    /// The executor that ``Configuration/resumption`` chooses: ``executor`` for
    /// ``Resumption/portWorkers``, nil (no preference) for ``Resumption/globalExecutor``. Pass
    /// it to `Task(executorPreference:)` or `withTaskExecutorPreference(_:operation:)`.
    public var preferredExecutor: (any TaskExecutor)? {
        configuration.resumption == .portWorkers ? executor : nil
    }

    /// The completion port's counters (`CompletionPort.Statistics.operationsInFlight` is 0
    /// when no async operation is pending).
    public var statistics: CompletionPort.Statistics {
        port.statistics
    }

    /// Whether ``shutdown()`` has begun.
    public var isShutDown: Bool {
        state.load(ordering: .acquiring) != AsyncPort.running
    }

    /// Throws `RingPortError.Code.portClosed` once ``shutdown()`` has begun.
    func checkRunning(_ operation: @autoclosure () -> String) throws(RingPortError) {
        if isShutDown { throw RingPortError(.portClosed, operation: operation()) }
    }

    /// Associates `descriptor` with the port (which owns it from now on, also when this throws),
    /// unless ``shutdown()`` has begun. Checked after the association: ``shutdown()`` marks the
    /// port stopping before it closes every handle, under each ring's lock, so a handle
    /// associated after that sweep sees the mark here and is closed at once, instead of living
    /// on with operations whose completions the port's close would drop (a task waiting on one
    /// would wait forever).
    func associate(
        descriptor: Int32, peerAddress: SocketAddress?, for operation: @autoclosure () -> String
    )
        throws(RingPortError) -> IOHandle
    {
        let handle: IOHandle
        do {
            handle = try port.associate(descriptor: descriptor, peerAddress: peerAddress)
        } catch {
            SystemCall.close(descriptor)
            throw error
        }
        if isShutDown {
            port.close(handle)
            throw RingPortError(.portClosed, operation: operation())
        }
        return handle
    }

    // MARK: Completions (worker threads)

    /// The most buffers one gathered send of a connection carries.
    static let gatheredBuffers = 16

    /// Who handles a completion, as the context's `userValue` says (so that the handler finds
    /// the attachment's type without a dynamic cast). The values carry the layer's mark in their
    /// high bytes ("RPASYNC"), so that a context of the application's own, posted on ``port``
    /// with a small `userValue`, is never taken for one of the layer's.
    enum CompletionTarget: UInt64 {
        /// An ``OperationSlot`` (accept, connect).
        case operationSlot = 0x5250_4153_594E_4301
        /// A connection's receiving side (``ConnectionStreams``).
        case inbound = 0x5250_4153_594E_4302
        /// A connection's sending side (``ConnectionStreams``).
        case outbound = 0x5250_4153_594E_4303
    }

    /// The workers' handler: hands `completion` to the stream or slot waiting for it (which
    /// resumes the waiting task), then runs the jobs that resumption put on this thread.
    private static func handle(_ completion: Completion, executor: PortTaskExecutor, depot: ByteBufferDepot) {
        // The thread's run list, borrowed from its worker (no retain per completion).
        guard let local = executor.attachCurrentThread() else {
            dispatch(completion, executor: executor, local: nil, depot: depot)
            return
        }
        local._withUnsafeGuaranteedRef { local in
            dispatch(completion, executor: executor, local: local, depot: depot)
            executor.runLocalJobs(local)
        }
    }

    /// Hands `completion` to its stream or slot (see ``handle(_:executor:depot:)``).
    @inline(__always)
    private static func dispatch(
        _ completion: Completion, executor: PortTaskExecutor, local: WorkerJobs?, depot: ByteBufferDepot
    ) {
        if completion.operation == .user && completion.userValue == PortTaskExecutor.wakeUpValue {
            executor.runSharedJobs()
        } else if completion.context?.attachment != nil,
            let target = CompletionTarget(rawValue: completion.context?.userValue ?? 0)
        {
            // Read through the completion, which holds the context for this call: binding the
            // context to a name of its own would cost a retain and a release per completion.
            switch target {
            case .inbound:
                // Borrowed, like the send's below: the context's link keeps the streams, and
                // the call that cuts it keeps them until it returns.
                withStreams(of: completion) { streams in
                    withBufferCache(of: local, depot: depot) { streams.receiveCompleted(completion, buffers: &$0) }
                }
            case .outbound:
                withStreams(of: completion) { streams in
                    withBufferCache(of: local, depot: depot) { streams.sendCompleted(completion, buffers: &$0) }
                }
            case .operationSlot:
                unsafeDowncast(
                    completion.context.unsafelyUnwrapped.attachment.unsafelyUnwrapped, to: OperationSlot.self
                )
                .complete(completion)
            }
        } else {
            // Not one of the layer's operations (nobody waits for it): do not leak what it carries.
            completion.discardCarriedResources()
        }
    }

    /// Calls `body` with the connection streams `completion`'s context is linked to (its
    /// `attachment`), borrowed: bound to a name, the attachment was retained and released on
    /// every completion. The link keeps the streams alive; the streams' completion handlers cut
    /// it only by moving it into a local that they keep to their end.
    @inline(__always)
    private static func withStreams(of completion: Completion, _ body: (ConnectionStreams) -> Void) {
        Unmanaged.passUnretained(
            unsafeDowncast(
                completion.context.unsafelyUnwrapped.attachment.unsafelyUnwrapped, to: ConnectionStreams.self)
        )._withUnsafeGuaranteedRef(body)
    }

    /// Calls `body` with the worker thread's buffer cache (or, on a thread without one, a
    /// cache of the moment), which exchanges buffers with `depot`.
    @inline(__always)
    private static func withBufferCache(
        of local: WorkerJobs?, depot: ByteBufferDepot, _ body: (inout ByteBufferCache) -> Void
    ) {
        if local != nil {
            // Borrowed: the caller holds the thread's run list (bound with `if let`, it was
            // retained and released per completion).
            Unmanaged.passUnretained(local.unsafelyUnwrapped)._withUnsafeGuaranteedRef { local in
                if local.buffers.depot !== depot { local.buffers.depot = depot }
                body(&local.buffers)
            }
        } else {
            var cache = ByteBufferCache(depot: depot)
            body(&cache)
        }
    }

    // MARK: Shutdown

    /// Shuts the port down: closes every handle (listeners end their sequences, pending reads,
    /// writes, accepts and connects throw `RingPortError.Code.handleClosed`), waits until
    /// their completions were handled (up to ``Configuration/shutdownTimeout``), stops the
    /// workers, handles on its own thread what they left (a worker kept busy past the timeout
    /// held its connections' completions until it stopped), and closes the port.
    /// Tasks that prefer ``executor`` keep running on the global executor afterwards.
    /// Idempotent; later calls return at once.
    ///
    /// May be called from any task, including one running on ``executor``: the waiting happens
    /// on a thread of its own.
    public func shutdown() async {
        guard
            state.compareExchange(
                expected: AsyncPort.running, desired: AsyncPort.stopping, ordering: .acquiringAndReleasing
            ).exchanged
        else {
            return
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            // Without a thread of its own, the waiting happens on the caller's thread, or on
            // Swift's global executor when the caller is one of the workers (which the stop
            // waits for).
            let error = PThread.runDetached(name: "ringport-stop") { [self] in
                stopWorkersAndPort()
                continuation.resume()
            }
            if let error { logger.error("shutdown: \(error); stopping without a thread of its own") }
        }
    }

    private func stopWorkersAndPort() {
        // Twice: a connect that started just before the shutdown may associate a handle after
        // the first sweep.
        let deadline = MonotonicInstant.now.advanced(by: configuration.shutdownTimeout)
        for _ in 0..<2 {
            port.closeAllHandles()
            _ = waitUntil(deadline) { port.isIdle }
        }
        let statistics = port.statistics
        if statistics.operationsInFlight > 0 || statistics.completionsWaiting > 0 {
            // A completion waits when the worker handling its connection has not come back (a
            // task or handler still busy on it).
            logger.warning(
                """
                shutdown: after \(configuration.shutdownTimeout), \(statistics.operationsInFlight) operations \
                still in flight and \(statistics.completionsWaiting) completions not handled; they are handled \
                once the workers stopped
                """
            )
        }
        memorySweep.stop()
        workers.shutdown()
        // From here on the tasks' jobs run on the global executor, also those resumed below.
        executor.stop()
        // What a busy worker held until it stopped, and what the workers had in flight: handled
        // here, so that no task waits on a completion the close would drop.
        workers.handleRemaining(for: .seconds(1))
        port.close()
        state.store(AsyncPort.stopped, ordering: .releasing)
    }
}
