import CLiburing
import Glibc
import Logging
import Synchronization

/// An I/O completion port on io_uring (or, where io_uring is refused, on epoll).
///
/// The model is the Windows completion port's: associate descriptors with the port
/// (``associate(descriptor:peerAddress:userState:ring:)``), post asynchronous operations with a
/// per-I/O context (``read(_:into:range:)``, ``write(_:from:range:)``, ``accept(on:context:)``, ...),
/// and let worker threads take the finished operations off the port
/// (``CompletionWorker/dequeue(timeout:)``, or a ``WorkerPool`` that calls a handler).
///
/// Underneath, the port is ``Configuration/ringCount`` io_uring instances ("rings"). Each handle
/// belongs to one ring for life; workers attach to rings; one worker per ring waits in the kernel
/// at a time and the others stand by. See `docs/ARCHITECTURE.md`.
///
/// Where the kernel refuses io_uring (a container's default seccomp profile, the
/// `kernel.io_uring_disabled` sysctl, a kernel older than 5.11), the port serves with the same
/// semantics over epoll (``Backend``): ``features`` then reports what epoll cannot do (multishot
/// operations, provided buffers, zero-copy send) as absent.
///
/// ## Thread-safety
/// Every method may be called from any thread. Completions of one handle are never handled on
/// two threads at once (see ``CompletionWorker``).
///
/// The kernel ties an io_uring operation to the thread that submitted it and cancels it when
/// that thread exits. Post long-lived operations (accepts, reads that may wait for a long time)
/// from threads that outlive them: the port's workers, or the main thread.
public final class CompletionPort: Sendable {
    /// How to build a port.
    public struct Configuration: Sendable {
        /// What performs the operations. Default: ``Backend/automatic`` (io_uring, else epoll).
        public var backend = Backend.automatic
        /// The number of io_uring instances. Each handle lives on one of them. Default:
        /// ``defaultRingCount``.
        public var ringCount: Int = Configuration.defaultRingCount
        /// Submission queue entries per ring (a power of two, 1...32768). The queue is submitted
        /// and reused when it fills, so this bounds a batch, not the operations in flight.
        public var ringEntries: UInt32 = 256
        /// Completion queue entries per ring; nil means `max(4096, 2 × ringEntries)`. When more
        /// completions arrive than fit, the kernel keeps the rest in its overflow list and
        /// RingPort reaps them: none is lost, it is only slower.
        public var completionQueueEntries: UInt32?
        /// Threads a ``WorkerPool`` starts by default: ``defaultWorkerCount``.
        public var workerCount: Int = Configuration.defaultWorkerCount
        /// How long a ring's leader may spend in one completion's handler before a standby
        /// worker takes the ring over.
        public var stallThreshold: Duration = .milliseconds(5)
        /// Where the port logs (submission errors, stale completions, takeovers).
        public var logger = Logger(label: "ringport.port")
        /// Provided buffers for multishot receives (``CompletionPort/receiveMultishot(_:context:limit:)``): each
        /// ring gets `count` buffers of `size` bytes, shared by all of its connections. nil (the
        /// default): no multishot receive. When the kernel has no buffer rings (before 5.19) the
        /// port is created without them and ``CompletionPort/supportsMultishotReceive`` is false.
        public var providedBuffers: ProvidedBuffers?
        /// Replaces chosen operations with NOPs that complete with chosen results, to drive
        /// the error paths of completion handlers in tests. nil (the default): none.
        public var faultInjection: FaultInjection?
        /// Test seam: answers `io_uring_setup` instead of the kernel (return nil to pass).
        var setupFault: (@Sendable (_ flags: UInt32) -> Int32?)?
        /// Test seam: `IORING_FEAT_*` bits to treat as absent.
        var hiddenFeatures: UInt32 = 0
        /// Test seam: whether ``Backend/automatic`` consults `RINGPORT_BACKEND` (tests of the
        /// automatic choice itself run under either value of it).
        var readsBackendFromEnvironment = true

        /// The defaults.
        public init() {}

        /// CPU count × 2 + 2: the worker count of the classic completion-port server.
        public static var defaultWorkerCount: Int {
            SystemInfo.availableCPUCount * 2 + 2
        }

        /// One ring per two CPUs (at least one): each ring has one active thread, and the
        /// kernel's network stack needs CPU time of its own. Measured on two cores with the
        /// client on the same machine, one ring matched a one-ring C liburing server while two
        /// rings cost about 30% of the messages per second and 40% more CPU per message
        /// (batching collapses when rings outnumber the free cores; see docs/ARCHITECTURE.md).
        public static var defaultRingCount: Int {
            max(1, SystemInfo.availableCPUCount / 2)
        }
    }

    /// What performs a port's operations.
    public enum Backend: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
        /// io_uring; epoll where the kernel refuses io_uring (``IOURingUnavailability/isRefusal``),
        /// logged once at warning level with the reason and how to enable io_uring. The environment
        /// variable `RINGPORT_BACKEND` (`io_uring`, `epoll` or `auto`) overrides this default, so
        /// that a deployment (or a test run) can choose without a rebuild.
        case automatic = "auto"
        /// io_uring only: the port fails to start where it is refused.
        case ioURing = "io_uring"
        /// epoll: readiness, then the system call, then a completion (see `docs/ARCHITECTURE.md`).
        case epoll

        /// `auto`, `io_uring` or `epoll`.
        public var description: String { rawValue }

        /// The environment variable that overrides ``automatic``.
        public static let environmentVariable = "RINGPORT_BACKEND"

        /// What ``automatic`` stands for in this process: the backend `RINGPORT_BACKEND` names,
        /// or ``automatic`` when it is unset or empty.
        ///
        /// - Throws: ``RingPortError/Code/invalidArgument`` when the variable holds something else.
        public static func fromEnvironment() throws(RingPortError) -> Backend {
            guard let value = getenv(environmentVariable).map({ String(cString: $0) }), !value.isEmpty else {
                return .automatic
            }
            guard let backend = Backend(rawValue: value) else {
                throw RingPortError(
                    .invalidArgument, operation: "\(environmentVariable)=\(value) (expected auto, io_uring or epoll)")
            }
            return backend
        }
    }

    /// The provided buffers of each ring.
    public struct ProvidedBuffers: Hashable, Sendable {
        /// Buffers per ring, a power of two up to 32768.
        public var count: Int
        /// Bytes per buffer: the most one receive completion delivers.
        public var size: Int

        /// `count` buffers of `size` bytes per ring.
        public init(count: Int = 1024, size: Int = 16384) {
            self.count = count
            self.size = size
        }
    }

    /// The buffer group RingPort registers its provided buffers under.
    static let providedBufferGroup: UInt16 = 0

    /// Counters of a port, summed over its rings.
    public struct Statistics: Hashable, Sendable {
        /// Operations posted (each is one SQE).
        public var submittedOperations: UInt64 = 0
        /// Operations that ended (their last completion was reaped).
        public var completedOperations: UInt64 = 0
        /// Completions reaped: one per single-shot operation, one per result of a multishot one.
        public var completions: UInt64 = 0
        /// Operations the kernel owns now.
        public var operationsInFlight = 0
        /// Completions reaped and waiting to be dequeued.
        public var completionsWaiting = 0
        /// Completions whose `user_data` matched no in-flight operation (should stay 0).
        public var staleCompletions: UInt64 = 0
        /// Completions the kernel dropped because its overflow list could not grow (should stay 0).
        public var droppedCompletions: UInt64 = 0
        /// `io_uring_enter` calls.
        public var kernelEnters: UInt64 = 0
        /// Times the submission queue was full and was submitted to make room.
        public var submissionQueueFullEvents: UInt64 = 0
        /// Times a standby worker took a ring over from a leader stuck in a handler.
        public var leaderTakeovers: UInt64 = 0
        /// Handles associated and not closed.
        public var openHandles = 0
        /// Provided buffers the application holds (received, not released), and those released
        /// on a pool worker that the worker has not given back yet (it does at its next dequeue).
        public var buffersOutstanding = 0

        /// All zero.
        public init() {}
    }

    /// The configuration the port was built with.
    public let configuration: Configuration
    /// The backend that serves: ``Backend/ioURing`` or ``Backend/epoll``.
    public let backend: Backend
    /// Why ``Backend/automatic`` chose epoll: the error io_uring's set-up gave (nil when io_uring
    /// serves, or when epoll was asked for).
    public let backendFallbackReason: RingPortError?
    /// Whether multishot receives honour their byte limit (``IOURingFeatures/multishotReceiveLimit``
    /// of this backend), kept so that arming a receive does not copy ``features``.
    let honoursMultishotReceiveLimit: Bool
    /// The rings; a handle's ring is `rings[handle.id.ring]`.
    let rings: [Ring]
    /// The same rings, unretained, for the post path
    /// (``post(onRing:_:handle:context:postedResult:userValue:isZeroCopy:prepare:)``): ``rings``
    /// holds them for the port's whole life.
    private let unretainedRings: [Unmanaged<Ring>]
    /// Per ring, the buffer group of its provided buffers (nil without them).
    let providedBufferGroups: [UInt16?]
    private let nextRing = Atomic<Int>(0)
    private let attachedWorkers: LockedValue<[Int]>
    private let uncoveredRings: Atomic<Int>
    private let closed = Atomic<Bool>(false)

    /// How often a worker polls rings that have no worker attached.
    static let uncoveredRingPollInterval: UInt64 = 1_000_000

    /// Sets up the rings.
    ///
    /// - Throws: ``RingPortError`` with ``RingPortError/Code/ioURingUnavailable`` and an
    ///   ``IOURingUnavailability`` naming the cause and the fix when the kernel refuses io_uring
    ///   and the backend is ``Backend/ioURing`` (``Backend/automatic`` serves with epoll then);
    ///   ``RingPortError/Code/invalidArgument`` for impossible sizes or an unknown
    ///   `RINGPORT_BACKEND`; ``RingPortError/Code/systemCallFailed`` when epoll cannot be set up.
    public init(configuration: Configuration = .init()) throws(RingPortError) {
        guard configuration.ringCount >= 1, configuration.ringCount <= 256 else {
            throw RingPortError(.invalidArgument, operation: "ringCount \(configuration.ringCount) (1...256)")
        }
        guard configuration.ringEntries >= 1, configuration.ringEntries <= 32768 else {
            throw RingPortError(.invalidArgument, operation: "ringEntries \(configuration.ringEntries) (1...32768)")
        }
        let completionEntries = configuration.completionQueueEntries ?? max(4096, 2 * configuration.ringEntries)
        guard completionEntries >= configuration.ringEntries, completionEntries <= 65536 else {
            throw RingPortError(
                .invalidArgument,
                operation: "completionQueueEntries \(completionEntries) (ringEntries...65536)")
        }
        if let buffers = configuration.providedBuffers {
            guard buffers.count >= 1, buffers.count <= 32768, buffers.count & (buffers.count - 1) == 0,
                buffers.size >= 1, buffers.size <= 1 << 30
            else {
                throw RingPortError(
                    .invalidArgument,
                    operation: """
                        providedBuffers \(buffers.count) × \(buffers.size) (count: a power of two up to 32768)
                        """)
            }
        }
        self.configuration = configuration
        var requested = configuration.backend
        if requested == .automatic && configuration.readsBackendFromEnvironment {
            requested = try Backend.fromEnvironment()
        }
        var backend = requested == .epoll ? Backend.epoll : .ioURing
        var fallbackReason: RingPortError?
        var rings: [Ring] = []
        for index in 0..<configuration.ringCount {
            var uringQueues: IOURing?
            var bufferRing: ProvidedBufferRing?
            if backend == .ioURing {
                do {
                    let uring = try IOURing(
                        entries: configuration.ringEntries, completionEntries: completionEntries,
                        setupHook: configuration.setupFault, hiddenFeatures: configuration.hiddenFeatures)
                    uringQueues = uring
                    if let buffers = configuration.providedBuffers {
                        do {
                            bufferRing = try ProvidedBufferRing(
                                ring: uring, groupID: CompletionPort.providedBufferGroup,
                                count: buffers.count, bufferSize: buffers.size)
                        } catch {
                            configuration.logger.notice(
                                "provided buffer rings are unavailable (\(error)); multishot receive is disabled")
                        }
                    }
                } catch  where index == 0 && requested == .automatic && error.unavailability?.isRefusal == true {
                    // Every ring of a port has the same backend: only the first decides.
                    backend = .epoll
                    fallbackReason = error
                    configuration.logger.warning(
                        """
                        io_uring is unavailable, so the port serves with the epoll backend. \(error) \
                        (RINGPORT_BACKEND=epoll, or Configuration.backend = .epoll, chooses epoll without trying.)
                        """)
                }
            }
            // io_uring, or epoll: asked for, or after the first ring's refusal.
            let queues: RingQueues
            if let uringQueues {
                queues = uringQueues
            } else {
                queues = try EpollRing(entries: configuration.ringEntries, completionEntries: completionEntries)
            }
            rings.append(
                try Ring(
                    index: index, queues: queues, bufferRing: bufferRing,
                    stallThreshold: configuration.stallThreshold, faultInjection: configuration.faultInjection,
                    logger: configuration.logger))
        }
        self.backend = backend
        backendFallbackReason = fallbackReason
        honoursMultishotReceiveLimit =
            backend == .ioURing && (IOURingFeatures.probedOnce?.multishotReceiveLimit ?? false)
        self.rings = rings
        unretainedRings = rings.map { Unmanaged.passUnretained($0) }
        providedBufferGroups = rings.map { $0.bufferRing?.groupID }
        attachedWorkers = LockedValue([Int](repeating: 0, count: rings.count))
        uncoveredRings = Atomic(rings.count)
    }

    deinit {
        close()
    }

    /// The number of rings.
    public var ringCount: Int { rings.count }

    /// What the port's backend offers of what RingPort uses: on io_uring, the kernel's features
    /// (``IOURingFeatures/probe()``, made once per process); on epoll,
    /// ``IOURingFeatures/epollBackend`` (none of the optional ones).
    public var features: IOURingFeatures {
        backend == .epoll ? .epollBackend : IOURingFeatures.probedOnce ?? .epollBackend
    }

    /// Whether ``receiveMultishot(_:context:limit:)`` can be used: the port was configured with
    /// ``Configuration/providedBuffers`` and the kernel registered them (Linux 5.19+; multishot
    /// receive itself needs 6.0, see ``IOURingFeatures``).
    public var supportsMultishotReceive: Bool {
        rings.allSatisfy { $0.bufferRing != nil }
    }

    /// Whether ring `ring` has a provided buffer for the kernel to fill now. The buffers that
    /// handlers on the calling pool worker released, and that would go back with the worker's
    /// next pass through the ring's lock, go back first. For a receive that ended with `ENOBUFS`
    /// (``RingPortError/Code`` `noBufferSpace`): whether to receive again at once, or to wait
    /// for a buffer to come back. Any thread.
    package func hasFreeProvidedBuffer(onRing ring: Int) -> Bool {
        rings[ring].hasFreeProvidedBuffer()
    }

    // MARK: Handles

    /// Associates a descriptor with the port and returns its handle (the completion key).
    ///
    /// The handle owns the descriptor from now on; ``close(_:)`` closes it. Handles are spread
    /// over the rings round-robin, unless `ring` names one.
    ///
    /// - Parameters:
    ///   - descriptor: a socket (or another descriptor io_uring can read and write).
    ///   - peerAddress: the peer, e.g. from ``IOContext/acceptedPeerAddress``.
    ///   - userState: the application's per-handle state.
    ///   - ring: the ring the handle belongs to (`0..<ringCount`; its completions are reaped by
    ///     that ring's leader), or nil for the next one round-robin.
    public func associate(
        descriptor: Int32, peerAddress: SocketAddress? = nil, userState: (any Sendable)? = nil, ring: Int? = nil
    ) throws(RingPortError) -> IOHandle {
        guard descriptor >= 0 else {
            throw RingPortError(.invalidArgument, operation: "associate descriptor \(descriptor)")
        }
        if let ring, !rings.indices.contains(ring) {
            throw RingPortError(.invalidArgument, operation: "associate with ring \(ring) of \(rings.count)")
        }
        let ring = rings[ring ?? nextRingIndex()]
        return try ring.lock.withLock { () throws(RingPortError) -> IOHandle in
            try ring.associateLocked(descriptor: descriptor, peerAddress: peerAddress, userState: userState)
        }
    }

    /// Closes a handle: cancels its in-flight operations (their completions still arrive,
    /// cancelled, and their buffers stay valid until then) and closes its descriptor, like
    /// `closesocket` on a socket associated with a completion port. Idempotent.
    ///
    /// Operations posted on the handle afterwards fail with ``RingPortError/Code/handleClosed``.
    public func close(_ handle: IOHandle) {
        let ring = rings[handle.id.ring]
        ring.lock.withLock { ring.closeLocked(handle) }
    }

    /// Shuts down the sending side of a socket handle (`shutdown(SHUT_WR)`): the peer reads an
    /// end of stream once the bytes sent before have arrived; receiving goes on. Call it after the
    /// last send completed. May be called from any thread, also while another closes the handle.
    ///
    /// Checked against ``close(_:)`` under the handle's ring's lock, which the close holds from
    /// marking the handle closed until its descriptor is closed (or queued for closing): the
    /// call never reaches the descriptor's number after the close, when it may be another
    /// socket's. `TCPSocket.shutdownWriting(handle.descriptor)` on a thread that does not own
    /// every close of the handle can.
    ///
    /// - Throws: ``RingPortError/Code/handleClosed`` after ``close(_:)``;
    ///   ``RingPortError/Code/systemCallFailed`` with `ENOTCONN` when the connection is gone
    ///   already, `ENOTSOCK` for a descriptor that is not a socket.
    public func shutdownWriting(_ handle: IOHandle) throws(RingPortError) {
        try shutdown(handle, direction: .writing)
    }

    /// Shuts down the receiving side of a socket handle (`shutdown(SHUT_RD)`): receives on it end
    /// (a receive completes with 0 bytes); sending goes on. Checked against ``close(_:)`` as
    /// ``shutdownWriting(_:)`` is; any thread.
    ///
    /// - Throws: as ``shutdownWriting(_:)``.
    public func shutdownReading(_ handle: IOHandle) throws(RingPortError) {
        try shutdown(handle, direction: .reading)
    }

    /// `shutdown(2)` of one side of `handle`'s socket, under its ring's lock (see
    /// ``shutdownWriting(_:)``).
    private func shutdown(_ handle: IOHandle, direction: TCPSocket.ShutdownDirection) throws(RingPortError) {
        let ring = rings[handle.id.ring]
        try ring.lock.withLock { () throws(RingPortError) in
            guard !handle.isClosed else {
                throw RingPortError(.handleClosed, operation: "\(direction.callName) on handle \(handle.id)")
            }
            try TCPSocket.shutdown(handle.descriptor, direction)
        }
    }

    /// Closes every handle still open, as ``close(_:)`` does one by one. Servers call this to
    /// shut down: each handle's operations complete as cancelled and are handled as usual.
    public func closeAllHandles() {
        for ring in rings {
            ring.lock.withLock { ring.closeAllHandlesLocked() }
        }
    }

    /// The next ring index, round-robin.
    func nextRingIndex() -> Int {
        rings.count == 1 ? 0 : nextRing.wrappingAdd(1, ordering: .relaxed).oldValue % rings.count
    }

    // MARK: Workers

    /// Creates a worker for the calling thread, attached to the ring with the fewest workers.
    /// See ``CompletionWorker``.
    public func makeWorker() -> CompletionWorker {
        makeWorker(stopSignal: nil)
    }

    func makeWorker(stopSignal: StopSignal?) -> CompletionWorker {
        let index = attachedWorkers.withLock { counts -> Int in
            let index = counts.indices.min { counts[$0] < counts[$1] }!
            counts[index] += 1
            uncoveredRings.store(counts.count { $0 == 0 }, ordering: .releasing)
            return index
        }
        let ring = rings[index]
        ring.lock.withLock { ring.leadership.attach() }
        return CompletionWorker(port: self, ring: ring, stopSignal: stopSignal)
    }

    func workerDetached(from index: Int) {
        attachedWorkers.withLock { counts in
            counts[index] -= 1
            uncoveredRings.store(counts.count { $0 == 0 }, ordering: .releasing)
        }
    }

    /// Whether some ring has no worker attached (then workers poll it).
    var hasUncoveredRings: Bool {
        uncoveredRings.load(ordering: .relaxed) > 0
    }

    /// Reaps the rings no worker is attached to and takes up to `budget` of their completions.
    /// Called without any ring's lock held.
    func serveUncoveredRings(
        budget: Int, worker: ObjectIdentifier, held: inout [IOHandle], deliver: (consuming Completion) -> Void
    ) -> Int {
        var taken = 0
        for ring in rings where taken < budget {
            // Checked under the ring's lock: a worker may have attached since the caller looked.
            taken += ring.lock.withLock {
                ring.serveWithoutWorkersLocked(budget: budget - taken, worker: worker, held: &held, deliver: deliver)
            }
        }
        return taken
    }

    /// Wakes every worker of the port so that it notices a stop request.
    func wakeAllWorkers() {
        for ring in rings {
            ring.lock.withLock { ring.wakeAllWorkersLocked() }
        }
    }

    // MARK: Statistics

    /// A snapshot of the port's counters.
    public var statistics: Statistics {
        var total = Statistics()
        for ring in rings {
            ring.lock.withLock { ring.addStatisticsLocked(to: &total) }
        }
        return total
    }

    // MARK: Closing

    /// Closes the port: cancels every operation still in flight, waits for the kernel to
    /// complete them all, drops completions nobody dequeued (closing descriptors that accepts
    /// produced), closes every handle still open, and frees the rings. Idempotent.
    ///
    /// Detach every worker first (``WorkerPool/shutdown()``, ``CompletionWorker/detach()``).
    /// After this, posting and dequeuing throw ``RingPortError/Code/portClosed``.
    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let attached = attachedWorkers.withLock { $0.reduce(0, +) }
        precondition(attached == 0, "CompletionPort.close() with \(attached) workers still attached")
        for ring in rings {
            ring.lock.withLock { ring.beginClosingLocked() }
        }
        for ring in rings {
            let deadline = MonotonicInstant.now.advanced(by: .seconds(10))
            ring.lock.withLock { ring.drainAndCloseLocked(deadline: deadline) }
        }
    }
}

extension CompletionPort {
    /// Posts one operation on ring `index`
    /// (``Ring/post(_:handle:context:postedResult:userValue:isZeroCopy:prepare:)``), borrowing the
    /// ring: the port holds its rings for its whole life, so the post path changes no reference
    /// count to reach one.
    @inline(__always)
    func post(
        onRing index: Int,
        _ operation: IOOperation,
        handle: IOHandle?,
        context: IOContext?,
        postedResult: Int32 = 0,
        userValue: UInt64 = 0,
        isZeroCopy: Bool = false,
        prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void
    ) throws(RingPortError) {
        try unretainedRings[index].withBorrowedInstance { ring throws(RingPortError) in
            try ring.post(
                operation, handle: handle, context: context, postedResult: postedResult, userValue: userValue,
                isZeroCopy: isZeroCopy, prepare: prepare)
        }
    }
}
