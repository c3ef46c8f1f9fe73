import CRingPortThread
import Glibc
import Synchronization

/// A thread's seat at a completion port: what a worker thread calls "get queued completion
/// status" on.
///
/// Create one per thread with ``CompletionPort/makeWorker()`` and call ``dequeue(timeout:)`` in a
/// loop; ``WorkerPool`` does exactly that. The worker is attached to one of the port's rings.
/// While it waits, it either *leads* that ring (it is the one thread inside `io_uring_enter` for
/// it) or parks as a standby that takes the ring over when its leader is stuck in a handler
/// for longer than ``CompletionPort/Configuration/stallThreshold``.
///
/// ## Per-handle serialisation
/// A completion's handle stays *held* by the worker that dequeued it until that worker calls
/// ``dequeue(timeout:)`` again (or ``release()`` or ``detach()``). Meanwhile no other worker is
/// given a completion of that handle: they are deferred, in order, and handed to the holder
/// first when it comes back. So two completions of one handle never run at once, even with a
/// read and a write in flight.
///
/// ## Thread-safety
/// Not thread-safe: one thread uses a worker at a time (it is not `Sendable`). Create a worker
/// for each thread that dequeues. A port with N rings needs at least N workers dequeuing for its
/// rings to be waited on promptly; with fewer, the workers poll the uncovered rings every
/// millisecond.
public final class CompletionWorker {
    // Stored properties marked @exclusivity(unchecked) skip Swift's dynamic exclusivity checks:
    // a worker is used by one thread at a time (see above), and on the echo benchmark the checks
    // cost 12–14% of the server's CPU per message (docs/ARCHITECTURE.md).
    /// The port this worker dequeues from.
    public let port: CompletionPort
    /// The ring this worker is attached to (its "home" ring).
    let ring: Ring
    private let stopSignal: StopSignal?
    private var identity: ObjectIdentifier { ObjectIdentifier(self) }
    /// Whether this worker dequeues again and again until it is stopped: a ``WorkerPool``'s
    /// (the only workers with a stop signal), not one an application drives itself.
    private var comesBackToDequeue: Bool { stopSignal != nil }

    /// Handles whose completions this worker has been given and not yet released.
    @exclusivity(unchecked) private var held: [IOHandle] = []
    @exclusivity(unchecked) private var releasing: [IOHandle] = []
    @exclusivity(unchecked) private var isDetached = false
    /// Provided buffers of the home ring that handlers on this worker's thread released, given
    /// back to the kernel the next time the worker holds the ring's lock (``deferReturn(ofBuffer:in:)``):
    /// their IDs, `releasedBufferCount` of them, in storage of its own (an array's append and
    /// removal were calls into the standard library per buffer).
    private let releasedBuffers = UnsafeMutablePointer<UInt16>.allocate(
        capacity: CompletionWorker.releasedBufferCapacity)
    @exclusivity(unchecked) private var releasedBufferCount = 0
    private static let releasedBufferCapacity = 64
    /// What the layer that runs this worker's ``WorkerPool`` keeps for it (``ownerState(_:orMake:)``),
    /// retained, with its type.
    @exclusivity(unchecked) private var ownerState: Unmanaged<AnyObject>?
    @exclusivity(unchecked) private var ownerStateType: ObjectIdentifier?

    init(port: CompletionPort, ring: Ring, stopSignal: StopSignal?) {
        self.port = port
        self.ring = ring
        self.stopSignal = stopSignal
        held.reserveCapacity(64)
        releasing.reserveCapacity(64)
    }

    deinit {
        detach()
        releasedBuffers.deallocate()
        ownerState?.release()
    }

    /// Waits for one completion and returns it, or nil when `timeout` passed first (or the
    /// worker's pool is stopping). `nil` timeout waits as long as it takes.
    ///
    /// Releases the handles of the completions this worker dequeued before.
    ///
    /// - Throws: ``RingPortError`` with ``RingPortError/Code/portClosed`` after
    ///   ``CompletionPort/close()``, or ``RingPortError/Code/waitFailed`` when `io_uring_enter`
    ///   fails for a reason other than a timeout or an interruption.
    public func dequeue(timeout: Duration? = nil) throws(RingPortError) -> Completion? {
        var result: Completion?
        _ = try dequeue(timeout: timeout) { result = consume $0 }
        return consume result
    }

    /// Waits for one completion and hands it to `handle` once the ring's lock is released, or
    /// returns false when `timeout` passed first (or the worker's pool is stopping): the
    /// ``WorkerPool``'s loop. The same as ``dequeue(timeout:)`` without an optional completion in
    /// between, whose copy and destroy go through the type's metadata (`Completion` is too large
    /// for the compiler to handle inline).
    func dequeue(timeout: Duration?, handle: (consuming Completion) -> Void) throws(RingPortError) -> Bool {
        try withUnsafeTemporaryAllocation(of: Completion.self, capacity: 1) { slot throws(RingPortError) in
            let taken = try dequeue(budget: 1, deadline: Self.deadline(after: timeout)) {
                slot.initializeElement(at: 0, to: $0)
            }
            guard taken > 0 else { return false }
            handle(slot.moveElement(from: 0))
            return true
        }
    }

    /// Waits until at least one completion is ready and appends up to `maximumCount` of them to
    /// `completions` (reusing its storage), or returns 0 when `timeout` passed first.
    ///
    /// Every handle of the batch stays held until the next call. Returns the number appended.
    public func dequeue(
        into completions: inout [Completion], maximumCount: Int, timeout: Duration? = nil
    ) throws(RingPortError) -> Int {
        precondition(maximumCount > 0, "maximumCount must be positive")
        return try dequeue(budget: maximumCount, deadline: Self.deadline(after: timeout)) { completions.append($0) }
    }

    /// Releases the handles of the completions dequeued so far without waiting for more, so that
    /// other workers may handle their next completions (e.g. before handing work to another
    /// thread or blocking).
    public func release() {
        var budget = 0
        ring.lock.withLock {
            returnReleasedBuffersLocked()
            _ = releaseHeldLocked(budget: &budget) { _ in }
        }
    }

    /// Detaches the worker from the port: releases its handles and, if it leads its ring, hands
    /// the ring to a parked worker. The worker cannot dequeue afterwards. Called by `deinit`.
    public func detach() {
        guard !isDetached else { return }
        release()
        isDetached = true
        ring.lock.withLock {
            ring.leadership.detach(identity)
        }
        port.workerDetached(from: ring.index)
    }

    // MARK: The dequeue loop

    private static func deadline(after timeout: Duration?) -> MonotonicInstant {
        guard let timeout else { return .distantFuture }
        return MonotonicInstant.now.advanced(by: timeout)
    }

    private func dequeue(
        budget: Int, deadline: MonotonicInstant, deliver: (consuming Completion) -> Void
    ) throws(RingPortError) -> Int {
        precondition(!isDetached, "dequeue on a detached CompletionWorker")
        var budget = budget
        let me = identity
        // `ring` and `ring.leadership` are read through `self` each time, not bound to locals:
        // a local binding would retain them on every call.
        ring.lock.lock()
        defer { ring.lock.unlock() }
        returnReleasedBuffersLocked()
        var taken = releaseHeldLocked(budget: &budget, deliver: deliver)
        if taken > 0 {
            ring.leadership.ran(me)
            return taken
        }
        // A zero (or past) timeout still gets one look at the kernel: submit and reap without
        // waiting, as "get queued completion status" with a zero timeout polls.
        var polled = false
        while true {
            if stopSignal?.isRequested == true { return 0 }
            // A standby leaves what is ready to a running leader that comes back for it (a sentry
            // taking it at each watch ran handlers beside the leader, fighting it for the lock).
            if !ring.leadership.leavesReadyCompletionsToLeader(me) {
                taken = ring.takeReadyLocked(budget: budget, worker: me, held: &held, deliver: deliver)
                if taken > 0 {
                    ring.leadership.ran(me)
                    return taken
                }
            }
            if ring.isClosed {
                throw RingPortError(.portClosed, operation: "dequeue")
            }
            if port.hasUncoveredRings {
                ring.lock.unlock()
                taken = port.serveUncoveredRings(budget: budget, worker: me, held: &held, deliver: deliver)
                ring.lock.lock()
                if taken > 0 {
                    ring.leadership.ran(me)
                    return taken
                }
                // The lock was released: a stop request may have come meanwhile (completions
                // that came are seen by the wait below, which does not sleep on a full queue).
                if stopSignal?.isRequested == true { return 0 }
            }
            let now = MonotonicInstant.now
            let expired = now >= deadline
            if expired && polled { return 0 }
            if ring.leadership.isVacant || ring.leadership.isLeader(me) {
                ring.takeLeadershipLocked(by: me, comesBack: comesBackToDequeue)
                try ring.waitInKernelLocked(
                    now: now, deadline: deadline, wait: !expired,
                    maximumWait: port.hasUncoveredRings ? CompletionPort.uncoveredRingPollInterval : nil)
                polled = true
            } else if expired {
                return 0
            } else if ring.leadership.park(now: now, deadline: deadline, hasWork: { ring.hasWorkLocked }) {
                // This worker, the sentry, found the leader stuck in a handler: it leads now.
                ring.takeLeadershipLocked(by: me, comesBack: comesBackToDequeue)
            }
        }
    }

    // MARK: Provided buffers released on the worker's thread

    /// Takes over the return of provided buffer `id` of `ring`, released by a handler on this
    /// worker's thread, when `ring` is the worker's home ring: the buffer goes back to the kernel
    /// when the worker next takes the ring's lock (to dequeue, or to release or detach), or
    /// before the ring enters the kernel from this thread (at the latest), with the others
    /// released meanwhile, instead of one pass through the lock per buffer. Returns false for
    /// another ring's buffer, or when 64 wait already (a handler that releases many).
    @inline(__always)
    func deferReturn(ofBuffer id: UInt16, in ring: Ring) -> Bool {
        guard ring === self.ring, releasedBufferCount < CompletionWorker.releasedBufferCapacity else { return false }
        releasedBuffers[releasedBufferCount] = id
        releasedBufferCount += 1
        return true
    }

    /// Gives the buffers of ``deferReturn(ofBuffer:in:)`` back if `ring` is the worker's home
    /// ring, whose lock the caller holds: the ring, before it enters the kernel in the middle of
    /// a handler (a full submission queue).
    func returnReleasedBuffersLocked(ofHomeRing ring: Ring) {
        guard ring === self.ring else { return }
        returnReleasedBuffersLocked()
    }

    /// Gives the buffers of ``deferReturn(ofBuffer:in:)`` back. Called with the home ring's lock
    /// held. The ring's reference to itself, which it may drop with its last buffer, is released
    /// here: the worker's `ring` keeps it alive.
    @inline(__always)
    private func returnReleasedBuffersLocked() {
        guard releasedBufferCount > 0 else { return }
        let ids = UnsafeBufferPointer(start: releasedBuffers, count: releasedBufferCount)
        releasedBufferCount = 0
        ring.recycleBuffersLocked(ids)?.release()
    }

    // MARK: State the pool's owner keeps for the worker

    /// The state of type `State` that the layer running this worker's pool keeps for it (the
    /// server's write chunks, the async executor's run list): the one kept, or a new one from
    /// `make`, kept from then on. nil, without calling `make`, when the worker keeps state of
    /// another type.
    ///
    /// Call it only on the worker's own thread (found with ``poolWorkerOfCallingThread``): the
    /// state is that thread's, with no lock. Unretained: the worker keeps it until the worker is
    /// freed, when its pool thread's loop has ended; its deinit runs then, on that thread.
    @inline(__always)
    package func ownerState<State: AnyObject>(_ type: State.Type, orMake make: () -> State) -> Unmanaged<State>? {
        if ownerState == nil {
            ownerState = Unmanaged<AnyObject>.passRetained(make())
            ownerStateType = ObjectIdentifier(type)
        }
        return ownerState(type)
    }

    /// The state of type `State` kept for this worker (see ``ownerState(_:orMake:)``), or nil.
    @inline(__always)
    package func ownerState<State: AnyObject>(_ type: State.Type) -> Unmanaged<State>? {
        guard let ownerState, ownerStateType == ObjectIdentifier(type) else { return nil }
        return Unmanaged<State>.fromOpaque(ownerState.toOpaque())
    }

    /// Whether this worker dequeues from `port`.
    @inline(__always)
    package func serves(_ port: CompletionPort) -> Bool {
        self.port === port
    }

    // MARK: The calling thread's pool worker

    // The ``WorkerPool`` worker that runs on the calling thread is named by a C thread-local
    // variable (`CRingPortThread`), unretained: the pool's thread keeps its worker while the
    // variable names it. A pthread key cost a lazy global's check and a call into libc per
    // look-up.

    /// The state of type `State` kept for the calling thread's pool worker
    /// (``ownerState(_:orMake:)``), made with `make` on first use; nil when the calling thread
    /// is not a pool worker, or, with `port`, not a worker of `port` (borrowed).
    @inline(__always)
    package static func ownerStateOfCallingThread<State: AnyObject>(
        _ type: State.Type, servingPort port: Unmanaged<CompletionPort>? = nil, orMake make: () -> State
    ) -> Unmanaged<State>? {
        guard let worker = poolWorkerOfCallingThread else { return nil }
        return worker._withUnsafeGuaranteedRef { worker in
            if let port, !port._withUnsafeGuaranteedRef({ worker.serves($0) }) { return nil }
            return worker.ownerState(type, orMake: make)
        }
    }

    /// The state of type `State` kept for the calling thread's pool worker, or nil (none yet,
    /// or not a pool worker's thread).
    @inline(__always)
    package static func ownerStateOfCallingThread<State: AnyObject>(_ type: State.Type) -> Unmanaged<State>? {
        guard let worker = poolWorkerOfCallingThread else { return nil }
        return worker._withUnsafeGuaranteedRef { $0.ownerState(type) }
    }

    /// Names `worker` (nil: none) as the calling thread's pool worker. The pool's threads set it
    /// around their dequeue loop.
    static func setPoolWorkerOfCallingThread(_ worker: CompletionWorker?) {
        CRingPortThread_setPoolWorker(worker.map { Unmanaged.passUnretained($0).toOpaque() })
    }

    /// The worker of a ``WorkerPool`` that runs on the calling thread, if any; valid on this
    /// thread while it runs the pool's loop (its handlers).
    @inline(__always)
    package static var poolWorkerOfCallingThread: Unmanaged<CompletionWorker>? {
        guard let pointer = CRingPortThread_getPoolWorker() else { return nil }
        return Unmanaged.fromOpaque(pointer)
    }

    /// Releases every held handle. Completions of those handles that were deferred while they
    /// were held come back to this worker (up to `budget`); returns how many were delivered.
    /// Called with the home ring's lock held; a handle of another ring (served while that ring
    /// had no worker) is released under its own ring's lock, never with two locks held.
    private func releaseHeldLocked(budget: inout Int, deliver: (consuming Completion) -> Void) -> Int {
        guard !held.isEmpty else { return 0 }
        swap(&held, &releasing)
        let initialBudget = budget
        let me = identity
        // Popped, not iterated: each handle's reference moves out of the array instead of
        // being copied and released twice.
        while let handle = releasing.popLast() {
            if handle.id.ring == ring.index {
                ring.releaseLocked(handle, budget: &budget, worker: me, held: &held, deliver: deliver)
            } else {
                let owner = port.rings[handle.id.ring]
                ring.lock.unlock()
                owner.lock.withLock {
                    owner.releaseLocked(handle, budget: &budget, worker: me, held: &held, deliver: deliver)
                }
                ring.lock.lock()
            }
        }
        return initialBudget - budget
    }
}

/// A flag a ``WorkerPool`` raises to make its workers' ``CompletionWorker/dequeue(timeout:)``
/// return.
final class StopSignal: Sendable {
    private let flag = Atomic<Bool>(false)

    var isRequested: Bool { flag.load(ordering: .acquiring) }

    func request() { flag.store(true, ordering: .releasing) }
}
