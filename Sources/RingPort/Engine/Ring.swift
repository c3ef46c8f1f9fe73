import CLiburing
import DequeModule
import Glibc
import Logging
import SystemPackage

/// One ring of a completion port and everything that belongs to it: the handles it owns, the
/// operations its queues hold (an io_uring instance, or their epoll emulation: ``RingQueues``),
/// the completions reaped but not yet dequeued, and the workers that drive it (``RingLeadership``).
///
/// A handle belongs to one ring for life, so every operation of a handle goes through one
/// io_uring instance, in the order it was posted, and its completions come back through one
/// queue.
///
/// ## Threads
/// Everything below is guarded by ``lock``, except the leader's `io_uring_enter`, which runs
/// unlocked so that other threads can post while it waits. The state is private: the port and
/// its workers change it only through the methods here (those named `…Locked` expect the lock
/// held) and through ``leadership``.
///
/// Other threads never submit: they prepare their SQE (or queue it in the overflow queue when
/// the submission queue is full) and ring the doorbell if the leader sleeps in the kernel. The
/// kernel ties an io_uring request to the thread that submitted it and cancels it when that
/// thread exits; submitting only from the port's workers keeps operations posted from
/// short-lived threads (a Swift concurrency pool thread, a request thread) alive.
final class Ring: @unchecked Sendable {
    // @unchecked: every mutable property is guarded by `lock` (see above); `doorbell` is an
    // immutable descriptor, and its buffer is written by the kernel only.
    //
    // Stored properties marked @exclusivity(unchecked) skip Swift's dynamic exclusivity checks:
    // every access is already serialised as described, and on the echo benchmark the checks
    // cost 12–14% of the server's CPU per message (measured with -enforce-exclusivity=unchecked
    // against the default build; docs/ARCHITECTURE.md).

    /// The ring's counters, named as ``CompletionPort/Statistics`` names them.
    struct Counters {
        var submittedOperations: UInt64 = 0
        var completedOperations: UInt64 = 0
        var completions: UInt64 = 0
        var staleCompletions: UInt64 = 0
        var internalCompletions: UInt64 = 0
        var kernelEnters: UInt64 = 0
        var submissionQueueFullEvents: UInt64 = 0
        var busyRetries: UInt64 = 0
        var leaderTakeovers: UInt64 = 0
        var submitErrors: UInt64 = 0
        var doorbells: UInt64 = 0
        /// Requests cancelled and submitted again by a new leader thread (``migrateLocked()``).
        var migratedOperations: UInt64 = 0
        /// The kernel's count of dropped completions, saved when the io_uring instance closes.
        var droppedCompletionsAtClose: UInt64 = 0
    }

    /// The ring's index in its port (``IOHandle/ID/ring``).
    let index: Int
    /// The submission and completion queues: an io_uring instance (``IOURing``) or their
    /// emulation over epoll (``EpollRing``).
    let queues: RingQueues
    /// Whether requests stay bound to the thread that submitted them, so that a new leader
    /// thread submits the long-lived ones again (io_uring; see ``migrateLocked()``): the
    /// queues' ``RingQueues/bindsRequestsToSubmitter``, read once (it is fixed per backend) so
    /// that the post path makes no dynamic call for it.
    private let requestsMigrate: Bool
    let lock = ConditionMutex()
    /// Who leads the ring, and the standbys (guarded by ``lock``).
    let leadership: RingLeadership
    let logger: Logger
    /// An eventfd the leader keeps a read posted on, so that other threads can wake it.
    private let doorbell: Int32
    /// Where the kernel writes the doorbell's 8-byte counter. Freed in `deinit`, after the ring.
    private let doorbellBuffer: UnsafeMutablePointer<UInt64>
    /// Provided buffers for multishot receives, when the port was configured with them and the
    /// kernel has buffer rings. Its accounting is guarded by `lock`.
    let bufferRing: ProvidedBufferRing?
    /// Operations to replace with NOPs completing with chosen results (tests only).
    private let faultInjection: FaultInjection?

    // Guarded by `lock`.
    @exclusivity(unchecked) private var operations: GenerationalTable<OperationRecord>
    /// The SQEs of the requests that can migrate (``OperationRecord/canMigrate``), by slot of
    /// ``operations``, to submit them again unchanged from a new leader thread.
    @exclusivity(unchecked) private var migratableSubmissions: [io_uring_sqe] = []
    /// The leadership epoch whose requests were last migrated.
    @exclusivity(unchecked) private var migratedEpoch: UInt32 = 0
    @exclusivity(unchecked) private var handles = GenerationalTable<IOHandle>()
    @exclusivity(unchecked) private var ready = Deque<Completion>()
    /// Completions waiting in their handles' `deferredCompletions` (another worker is handling
    /// the handle): still waiting to be dequeued, so counted in `completionsWaiting`.
    @exclusivity(unchecked) private var deferredCount = 0
    /// SQEs prepared by non-leader threads while the submission queue was full, in order.
    @exclusivity(unchecked) private var overflow = Deque<io_uring_sqe>()
    /// Set by ``CompletionPort/close()``: no post, association or dequeue from then on.
    @exclusivity(unchecked) private(set) var isClosed = false
    /// The thread whose doorbell read is the current one, if one is armed. The kernel runs a
    /// request's completion work on the thread that submitted it, so a leader that took over
    /// arms a read of its own: the old leader may be stuck where that work cannot run.
    @exclusivity(unchecked) private var doorbellArmedBy: pthread_t?
    /// Sequence numbers of the doorbell reads the kernel holds (usually one).
    @exclusivity(unchecked) private var doorbellReads: [UInt32] = []
    @exclusivity(unchecked) private var doorbellSequence: UInt32 = 0
    @exclusivity(unchecked) private var doorbellRung = false
    @exclusivity(unchecked) private(set) var counters = Counters()
    /// The ring's reference to itself while the application holds provided buffers.
    @exclusivity(unchecked) private var selfWhileBuffersAreHeld: Unmanaged<Ring>?

    init(
        index: Int, queues: RingQueues, bufferRing: ProvidedBufferRing?, stallThreshold: Duration,
        faultInjection: FaultInjection? = nil, logger: Logger
    ) throws(RingPortError) {
        let doorbell = eventfd(0, Int32(EFD_CLOEXEC))
        guard doorbell >= 0 else {
            throw RingPortError(
                .systemCallFailed, operation: "eventfd for ring \(index)", errno: Errno(rawValue: Glibc.errno))
        }
        self.index = index
        self.queues = queues
        requestsMigrate = queues.bindsRequestsToSubmitter
        self.bufferRing = bufferRing
        self.faultInjection = faultInjection
        leadership = RingLeadership(lock: lock, stallThreshold: stallThreshold)
        self.logger = logger
        self.doorbell = doorbell
        doorbellBuffer = .allocate(capacity: 1)
        doorbellBuffer.initialize(to: 0)
        operations = GenerationalTable(reservingCapacity: Int(queues.completionEntries))
        ready.reserveCapacity(Int(queues.completionEntries))
    }

    deinit {
        closeIOURingLocked()
        doorbellBuffer.deallocate()
    }

    /// Whether entries wait to be submitted (prepared, or in the overflow queue).
    private var hasQueuedSubmissionsLocked: Bool {
        queues.unpublishedSubmissions > 0 || !overflow.isEmpty
    }

    /// Whether work waits for the leader: operations in flight, completions ready, or entries to
    /// submit (what makes a leader that does not progress a stalled one).
    var hasWorkLocked: Bool {
        operations.count > 0 || !ready.isEmpty || hasQueuedSubmissionsLocked
    }

    /// Whether completions wait to be dequeued.
    var hasReadyCompletionsLocked: Bool {
        !ready.isEmpty
    }

    // MARK: Handles

    /// Puts a new handle for `descriptor` in this ring's handle table.
    func associateLocked(
        descriptor: Int32, peerAddress: SocketAddress?, userState: (any Sendable)?
    ) throws(RingPortError) -> IOHandle {
        guard !isClosed else { throw RingPortError(.portClosed, operation: "associate") }
        queues.descriptorAssociated(descriptor)
        let address = handles.insert { slot, generation in
            IOHandle(
                descriptor: descriptor, peerAddress: peerAddress, userState: userState,
                id: IOHandle.ID(ring: index, slot: slot, generation: generation))
        }
        return handles[address.slot]
    }

    /// Closes every handle still open (see ``closeLocked(_:)``).
    func closeAllHandlesLocked() {
        for slot in handles.liveSlots {
            closeLocked(handles[slot])
        }
    }

    // MARK: Leading and waiting

    /// `worker` leads the ring from now on (see ``RingLeadership/take(by:)``); a takeover from a
    /// stuck leader is counted.
    func takeLeadershipLocked(by worker: ObjectIdentifier, comesBack: Bool) {
        if leadership.take(by: worker, comesBack: comesBack) {
            counters.leaderTakeovers &+= 1
            logger.notice(
                """
                ring \(index): the leader made no progress for a stall threshold, blocked \(leadership.lastStall); \
                a standby leads now
                """)
        }
    }

    /// The leader submits what was prepared and, when `wait` is set and nothing is ready yet,
    /// waits in `io_uring_enter` until a completion arrives, `deadline` passes, or at most
    /// `maximumWait` nanoseconds — without holding the lock; then reaps. Returns with the lock
    /// held and the caller still the leader.
    ///
    /// - Throws: ``RingPortError/Code/waitFailed`` when `io_uring_enter` fails for a reason other
    ///   than a timeout, an interruption or a full completion queue; a submission error.
    func waitInKernelLocked(
        now: MonotonicInstant, deadline: MonotonicInstant, wait: Bool, maximumWait: UInt64?
    ) throws(RingPortError) {
        try armDoorbellLocked()
        migrateLocked()
        // What overflowed goes into the submission queue first, as far as it fits; the rest goes
        // next time round, and the leader does not sleep until it has.
        let overflowDrained = moveOverflowLocked()
        let toSubmit = queues.flushSubmissions()
        let waitFor: UInt32 = wait && ready.isEmpty && overflowDrained ? 1 : 0
        leadership.leaderWillWaitInKernel()
        doorbellRung = false
        var timeout: UInt64? = deadline == .distantFuture ? nil : now.nanoseconds(until: deadline)
        if let maximumWait {
            timeout = min(timeout ?? .max, maximumWait)
        }
        lock.unlock()
        let result = queues.enter(toSubmit: toSubmit, waitFor: waitFor, timeout: timeout)
        lock.lock()
        leadership.leaderReturnedFromKernel()
        counters.kernelEnters &+= 1
        reapLocked()
        if result < 0 {
            switch -result {
            case ETIME, EINTR, EBUSY, EAGAIN:
                break
            case EBADR:
                reportDroppedCompletionsLocked()
            default:
                throw RingPortError(
                    .waitFailed, operation: "io_uring_enter(GETEVENTS) on ring \(index)",
                    errno: .init(rawValue: -result))
            }
        }
    }

    /// Stands in for the missing leader of a ring no worker is attached to: submits, reaps, and
    /// takes up to `budget` completions (nothing when a worker attached meanwhile).
    func serveWithoutWorkersLocked(
        budget: Int, worker: ObjectIdentifier, held: inout [IOHandle], deliver: (consuming Completion) -> Void
    ) -> Int {
        guard leadership.attachedWorkers == 0 else { return 0 }
        submitLoggingErrorsLocked()
        if !queues.completesWithoutEntering, queues.isOpen {
            // Nothing performs epoll's operations unless somebody enters: look, without waiting.
            _ = queues.enter(toSubmit: 0, waitFor: 1, timeout: 0)
        }
        reapLocked()
        let taken = takeReadyLocked(budget: budget, worker: worker, held: &held, deliver: deliver)
        // Submitting may let the lock go (a full submission queue): a worker that attached
        // meanwhile may be asleep in the kernel already, unaware of what was reaped here.
        if leadership.attachedWorkers > 0 && !ready.isEmpty { notifyLeaderLocked() }
        return taken
    }

    /// Wakes every worker of the ring (the pool is stopping): the standbys, and the leader out
    /// of the kernel.
    func wakeAllWorkersLocked() {
        leadership.wakeAllStandbys()
        if leadership.state == .waitingInKernel {
            ringDoorbellLocked()
        }
    }

    // MARK: Statistics

    /// Adds this ring's counters and gauges to `statistics`.
    func addStatisticsLocked(to statistics: inout CompletionPort.Statistics) {
        statistics.submittedOperations += counters.submittedOperations
        statistics.completedOperations += counters.completedOperations
        statistics.completions += counters.completions
        statistics.staleCompletions += counters.staleCompletions
        statistics.kernelEnters += counters.kernelEnters
        statistics.submissionQueueFullEvents += counters.submissionQueueFullEvents
        statistics.leaderTakeovers += counters.leaderTakeovers
        statistics.operationsInFlight += operations.count
        statistics.completionsWaiting += ready.count + deferredCount
        statistics.droppedCompletions += droppedCompletionsLocked
        statistics.openHandles += handles.count
        statistics.buffersOutstanding += bufferRing?.outstanding ?? 0
    }

    // MARK: Posting

    /// Prepares one SQE for `operation` and records it in the in-flight table.
    ///
    /// `prepare` fills the SQE (opcode, descriptor, buffer); this method sets its `user_data`.
    /// The leader submits it with everything else it prepared when it next enters the kernel;
    /// a sleeping leader is woken through the doorbell.
    @inline(__always)
    func post(
        _ operation: IOOperation,
        handle: IOHandle?,
        context: IOContext?,
        postedResult: Int32 = 0,
        userValue: UInt64 = 0,
        isZeroCopy: Bool = false,
        prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void
    ) throws(RingPortError) {
        lock.lock()
        defer { lock.unlock() }
        guard !isClosed else {
            throw RingPortError(.portClosed, operation: "post \(operation)")
        }
        // Unretained views of the caller's references, which it holds for the call: optional
        // bindings (`if let handle`) would retain and release each on the way.
        let handleReference = handle.map { Unmanaged.passUnretained($0) }
        let contextReference = context.map { Unmanaged.passUnretained($0) }
        if handle?.isClosed == true {
            throw RingPortError(.handleClosed, operation: "post \(operation) on handle \(handle!.id)")
        }
        if context?.beginFlight(onRing: index) == false {
            throw RingPortError(.contextInFlight, operation: "post \(operation)")
        }
        // The record's own references (released when the completion takes them over).
        var record = OperationRecord(
            operation: operation, context: contextReference?.retain(), handle: handleReference?.retain(),
            postedResult: postedResult, userValue: userValue, isZeroCopy: isZeroCopy, epoch: leadership.epoch)
        let injectedResult = faultInjection?.injectedResult(for: operation)
        if let injectedResult {
            record.isInjected = true
            record.isZeroCopy = false
            record.postedResult = injectedResult
        }
        let address = operations.insert(record)
        let userData = UserData(slot: address.slot, generation: address.generation)
        let canMigrate = requestsMigrate && !record.isZeroCopy && !record.isInjected
        var migratable: io_uring_sqe?
        do {
            try enqueueLocked { entry in
                if let injectedResult {
                    faultInjection.unsafelyUnwrapped.prepareInjectedNOP(entry, result: injectedResult)
                } else {
                    prepare(entry)
                }
                io_uring_sqe_set_data64(entry, userData.rawValue)
                if canMigrate && Ring.waitsOnTheNetwork(entry.pointee.opcode) { migratable = entry.pointee }
            }
        } catch {
            let record = operations.remove(slot: address.slot)
            record.context?.release()
            record.handle?.release()
            context?.endFlight()
            throw error
        }
        if let migratable {
            keepMigratableSubmission(migratable, slot: address.slot)
        }
        if let contextReference {
            contextReference._withUnsafeGuaranteedRef { context in
                context.operation = operation
                context.userData = userData.rawValue
                handleReference?._withUnsafeGuaranteedRef { $0.inflightContexts.append(contextReference) }
            }
        }
        counters.submittedOperations &+= 1
    }

    // MARK: Migrating requests to a new leader thread

    /// Whether an SQE of `opcode` may wait on the network for long and be cancelled and
    /// submitted again unchanged: receives, accepts, timeouts (absolute, see
    /// ``CompletionPort/timeout(after:context:handle:)``).
    ///
    /// Sends are not kept: one that the old leader submitted completes once, waking that thread
    /// once, while keeping a copy of every send's SQE cost each echoed message a read of the
    /// entry just written, which stalls on the stores still in flight to it.
    @inline(__always)
    static func waitsOnTheNetwork(_ opcode: UInt8) -> Bool {
        switch UInt32(opcode) {
        case IORING_OP_RECV.rawValue, IORING_OP_RECVMSG.rawValue, IORING_OP_ACCEPT.rawValue,
            IORING_OP_TIMEOUT.rawValue:
            true
        default:
            false
        }
    }

    /// A multishot receive limited to a number of bytes in all (its `optlen`, where liburing 2.3
    /// has `file_index`) delivered `delivered` of them: the kept SQE, which a migration submits
    /// again, asks for what is left of the limit (at least 1), not the whole of it once more.
    private func deductFromKeptLimitLocked(slot: UInt32, delivered: UInt32) {
        let index = Int(slot)
        guard UInt32(migratableSubmissions[index].opcode) == IORING_OP_RECV.rawValue else { return }
        let limit = migratableSubmissions[index].file_index
        guard limit > 0 else { return }
        migratableSubmissions[index].file_index = limit > delivered ? limit - delivered : 1
    }

    private func keepMigratableSubmission(_ submission: io_uring_sqe, slot: UInt32) {
        let index = Int(slot)
        if index >= migratableSubmissions.count {
            migratableSubmissions.append(
                contentsOf: repeatElement(io_uring_sqe(), count: index + 1 - migratableSubmissions.count))
        }
        migratableSubmissions[index] = submission
        operations[slot].canMigrate = true
    }

    /// Hands the requests an earlier leader thread submitted to the current one (the caller),
    /// once per change of leader thread.
    ///
    /// The kernel finishes a request (copies a receive's bytes, posts its completion) as task
    /// work on the thread that *submitted* it, and nothing moves a request to another thread.
    /// After a takeover, every multishot receive and accept the old leader armed would wake it —
    /// parked in the standbys' wait — for each of its completions, for the rest of the
    /// connection's life, and make it fight the new leader for the ring's lock. So the new
    /// leader cancels those requests and, when each cancellation completes, submits the same SQE
    /// again itself (``consumeLocked(_:)``): bytes and connections that arrive meanwhile wait in
    /// the socket. The application sees nothing; a request it cancels meanwhile completes as
    /// cancelled. Doorbell reads armed by other threads are cancelled too (the leader has armed
    /// its own).
    private func migrateLocked() {
        let epoch = leadership.epoch
        guard migratedEpoch != epoch else { return }
        migratedEpoch = epoch
        guard requestsMigrate else { return }
        for slot in operations.liveSlots {
            let record = operations[slot]
            guard record.canMigrate, !record.isMigrating, !record.cancelRequested, record.epoch != epoch else {
                continue
            }
            operations[slot].isMigrating = true
            let userData = UserData(slot: slot, generation: operations.generation(of: slot)).rawValue
            try? enqueueLocked { entry in
                io_uring_prep_cancel64(entry, userData, 0)
                io_uring_sqe_set_data64(entry, UserData.cancelRequest.rawValue)
            }
        }
        for sequence in doorbellReads where sequence != doorbellSequence {
            let userData = UserData.doorbell(sequence: sequence).rawValue
            try? enqueueLocked { entry in
                io_uring_prep_cancel64(entry, userData, 0)
                io_uring_sqe_set_data64(entry, UserData.cancelRequest.rawValue)
            }
        }
    }

    /// The cancellation of a migrating request completed: submits its SQE again. Returns false
    /// when it cannot (the port or the handle is closing): the `ECANCELED` is then delivered.
    ///
    /// Reaped by the running leader, the request is its own from now on. Reaped by another thread
    /// (a worker standing in for a ring nobody leads, while a new leader took the ring; or after
    /// every worker of the ring detached), it is submitted again all the same — delivering the
    /// `ECANCELED` would end an operation nobody cancelled — but as one of an earlier epoch, and
    /// the leader's next wait migrates it once more.
    private func resubmitMigratedLocked(slot: UInt32) -> Bool {
        let record = operations[slot]
        let handleIsClosed = record.handle?._withUnsafeGuaranteedRef { $0.isClosed } ?? false
        guard !isClosed, !handleIsClosed else { return false }
        operations[slot].isMigrating = false
        if leadership.callerIsRunningLeader {
            operations[slot].epoch = leadership.epoch
        } else {
            operations[slot].epoch = leadership.epoch &- 1
            migratedEpoch = leadership.epoch &- 1
        }
        let submission = migratableSubmissions[Int(slot)]
        try? enqueueLocked { entry in entry.pointee = submission }
        counters.migratedOperations &+= 1
        return true
    }

    /// Fills one SQE with `fill` and queues it, keeping the order of everything queued before:
    /// straight into the submission queue when there is room (the running leader first submits
    /// what a full queue holds, once, without waiting), else into the overflow queue, which the
    /// leader moves into the submission queue before it next enters the kernel. Never blocks and
    /// never spins with the lock held. Wakes the leader if needed.
    @inline(__always)
    private func enqueueLocked(_ fill: (UnsafeMutablePointer<io_uring_sqe>) -> Void) throws(RingPortError) {
        if overflow.isEmpty, let entry = queues.nextSubmissionEntry() {
            fill(entry)
        } else {
            counters.submissionQueueFullEvents &+= 1
            if overflow.isEmpty, let entry = makeRoomLocked() {
                fill(entry)
            } else {
                var entry = io_uring_sqe()
                fill(&entry)
                overflow.append(entry)
            }
        }
        notifyLeaderLocked()
    }

    /// The running leader's way to make room in a full submission queue: it submits what the
    /// queue holds, once, without waiting (an error leaves the entries queued for its next wait).
    /// Returns a free entry, or nil when the caller is not the running leader or the kernel took
    /// none.
    private func makeRoomLocked() -> UnsafeMutablePointer<io_uring_sqe>? {
        guard leadership.callerIsRunningLeader, queues.isOpen else { return nil }
        // The buffers this thread's handlers released go back first: the receives submitted now
        // may need them.
        if let worker = CompletionWorker.poolWorkerOfCallingThread {
            worker._withUnsafeGuaranteedRef { $0.returnReleasedBuffersLocked(ofHomeRing: self) }
        }
        _ = queues.enter(toSubmit: queues.flushSubmissions(), waitFor: 0, timeout: nil)
        counters.kernelEnters &+= 1
        return queues.nextSubmissionEntry()
    }

    /// Moves overflowed entries into the submission queue, in order, as far as there is room.
    /// Returns whether the overflow queue is empty now.
    private func moveOverflowLocked() -> Bool {
        while !overflow.isEmpty, let entry = queues.nextSubmissionEntry() {
            entry.pointee = overflow.removeFirst()
        }
        return overflow.isEmpty
    }

    /// Makes sure somebody will submit what was queued: rings the doorbell when the leader sleeps
    /// in the kernel, signals a parked worker when nobody leads. A running leader submits on its
    /// next wait by itself.
    @inline(__always)
    private func notifyLeaderLocked() {
        switch leadership.state {
        case .waitingInKernel:
            ringDoorbellLocked()
        case .none:
            leadership.wakeStandbyToLead()
        case .running:
            break
        }
    }

    /// Wakes the leader out of `io_uring_enter` (once per sleep).
    private func ringDoorbellLocked() {
        guard !doorbellRung else { return }
        doorbellRung = true
        counters.doorbells &+= 1
        SystemCall.signalEventCounter(doorbell)
    }

    /// Posts the read on the doorbell that a write by another thread completes, unless this
    /// thread has one armed already. Leader only.
    private func armDoorbellLocked() throws(RingPortError) {
        let me = pthread_self()
        if let armer = doorbellArmedBy, pthread_equal(armer, me) != 0 { return }
        doorbellSequence = (doorbellSequence &+ 1) & 0x7FFF_FFFF
        let userData = UserData.doorbell(sequence: doorbellSequence).rawValue
        let doorbell = self.doorbell
        let buffer = doorbellBuffer
        try enqueueLocked { entry in
            io_uring_prep_read(entry, doorbell, buffer, UInt32(MemoryLayout<UInt64>.size), 0)
            io_uring_sqe_set_data64(entry, userData)
        }
        doorbellArmedBy = me
        doorbellReads.append(doorbellSequence)
    }

    /// Queues cancellations of every doorbell read (when the port closes).
    private func cancelDoorbellReadsLocked() {
        for sequence in doorbellReads {
            try? cancelLocked(userData: UserData.doorbell(sequence: sequence).rawValue)
        }
    }

    /// Submits everything queued (overflow included), retrying while the kernel asks for
    /// completions to be reaped first (`EBUSY`, `EAGAIN`) or the call is interrupted. For a
    /// thread standing in for a missing leader (a worker serving a ring without workers,
    /// ``CompletionPort/close()``); it releases the lock while it waits for the kernel to make
    /// room. The leader itself never loops here: it moves the overflow into the submission queue
    /// as far as it fits before each wait, and the wait submits
    /// (``waitInKernelLocked(now:deadline:wait:maximumWait:)``).
    private func submitLocked() throws(RingPortError) {
        guard queues.isOpen else { return }
        repeat {
            _ = moveOverflowLocked()
            try enterSubmittingLocked()
        } while !overflow.isEmpty
    }

    /// Submits and logs an error instead of throwing: the entries stay queued and the next
    /// `io_uring_enter` submits them again.
    private func submitLoggingErrorsLocked() {
        do {
            try submitLocked()
        } catch {
            counters.submitErrors &+= 1
            logger.error("ring \(index): \(error)")
        }
    }

    private func enterSubmittingLocked() throws(RingPortError) {
        var pending = queues.flushSubmissions()
        var idleRounds = 0
        while pending > 0 {
            let result = queues.enter(toSubmit: pending, waitFor: 0, timeout: nil)
            counters.kernelEnters &+= 1
            if result < 0 {
                switch -result {
                case EINTR:
                    continue
                case EAGAIN, EBUSY:
                    // The completion queue is full or the kernel is short of memory: make room.
                    // The entries stay queued if this keeps failing; the next wait retries them.
                    counters.busyRetries &+= 1
                    idleRounds += 1
                    if idleRounds > 10_000 {
                        throw RingPortError(
                            .submissionFailed, operation: "io_uring_enter(to_submit: \(pending)) on ring \(index)",
                            errno: Errno(rawValue: -result))
                    }
                    if reapLocked() == 0 { yieldUnlocked() }
                    pending = queues.flushSubmissions()
                    continue
                default:
                    throw RingPortError(
                        .submissionFailed, operation: "io_uring_enter(to_submit: \(pending)) on ring \(index)",
                        errno: Errno(rawValue: -result))
                }
            }
            let remaining = queues.flushSubmissions()
            if remaining >= pending && result == 0 {
                idleRounds += 1
                if idleRounds > 10_000 {
                    throw RingPortError(
                        .submissionFailed,
                        operation: "io_uring_enter(to_submit: \(pending)) on ring \(index) makes no progress")
                }
                yieldUnlocked()
            }
            pending = remaining
        }
    }

    /// Lets other threads run, without holding the lock (while the kernel makes room).
    private func yieldUnlocked() {
        lock.unlock()
        sched_yield()
        lock.lock()
    }

    // MARK: Reaping

    /// Moves every visible CQE into the ready queue and returns how many there were.
    @discardableResult
    private func reapLocked() -> Int {
        guard queues.isOpen else { return 0 }
        var total = 0
        withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<io_uring_cqe>?.self, capacity: 64) { batch in
            while true {
                let count = queues.peekCompletions(into: batch)
                if count > 1 { prefetchLocked(UnsafeBufferPointer(rebasing: batch[0..<count])) }
                for position in 0..<count {
                    consumeLocked(batch[position].unsafelyUnwrapped.pointee)
                }
                queues.advanceCompletions(by: count)
                total += count
                if count < batch.count { break }
            }
        }
        return total
    }

    /// Starts fetching what consuming `entries` touches — their records in the operations table,
    /// then each record's context and handle, then the handle's owner — so that the cache misses
    /// of a batch overlap instead of coming one after another (at 1,000 connections these objects
    /// are cold).
    ///
    /// Not inlined: inlined, it made the compiler call `consumeLocked` instead of inlining it,
    /// which cost two retains and two releases per completion.
    @inline(never)
    private func prefetchLocked(_ entries: UnsafeBufferPointer<UnsafeMutablePointer<io_uring_cqe>?>) {
        for entry in entries {
            let userData = UserData(rawValue: entry.unsafelyUnwrapped.pointee.user_data)
            if !userData.isInternal, let address = operations.addressForPrefetch(slot: userData.slot) {
                CLiburing_prefetch_object(address)
            }
        }
        // The record of an entry's operation (none for internal ones or stale slots).
        func record(of entry: UnsafeMutablePointer<io_uring_cqe>?) -> OperationRecord? {
            let userData = UserData(rawValue: entry.unsafelyUnwrapped.pointee.user_data)
            return userData.isInternal ? nil : operations.elementIfPresent(at: userData.slot)
        }
        for entry in entries {
            guard let record = record(of: entry) else { continue }
            // Both objects span two cache lines; their hot fields lie in each.
            if let context = record.context { CLiburing_prefetch_object(context.toOpaque()) }
            if let handle = record.handle { CLiburing_prefetch_object(handle.toOpaque()) }
        }
        // Then what the layer above keeps for each handle (the server's connection), which its
        // handler touches first; the handles' lines are arriving by now.
        for entry in entries {
            guard let handle = record(of: entry)?.handle else { continue }
            handle._withUnsafeGuaranteedRef { handle in
                if let owner = handle.unretainedOwner { CLiburing_prefetch_object(owner.toOpaque()) }
            }
        }
    }

    /// Turns one CQE into a ``Completion`` (or drops it, counted, when it is internal or stale).
    @inline(__always)
    private func consumeLocked(_ entry: io_uring_cqe) {
        let userData = UserData(rawValue: entry.user_data)
        if userData.isInternal {
            counters.internalCompletions &+= 1
            if let sequence = userData.doorbellSequence {
                // Rung, or cancelled because the thread that armed it exited. If it was the
                // current read, the leader arms a new one on its next wait.
                doorbellReads.removeAll { $0 == sequence }
                if sequence == doorbellSequence { doorbellArmedBy = nil }
            }
            return
        }
        guard operations.contains(slot: userData.slot, generation: userData.generation) else {
            counters.staleCompletions &+= 1
            logger.error("ring \(index): stale completion dropped (user_data \(entry.user_data), result \(entry.res))")
            return
        }
        let isFinal = entry.flags & IORING_CQE_F_MORE == 0
        if isFinal && entry.res == -ECANCELED && operations[userData.slot].isMigrating
            && !operations[userData.slot].cancelRequested && resubmitMigratedLocked(slot: userData.slot)
        {
            counters.internalCompletions &+= 1
            return
        }
        if operations[userData.slot].isZeroCopy {
            // SEND_ZC: a result CQE (with F_MORE when a notification follows), then the
            // notification CQE once the kernel no longer needs the buffer. One completion is
            // delivered, at the end, with the first CQE's result.
            if !isFinal {
                operations[userData.slot].postedResult = entry.res
                return
            }
        }
        if !isFinal && entry.res > 0 && operations[userData.slot].canMigrate {
            deductFromKeptLimitLocked(slot: userData.slot, delivered: UInt32(entry.res))
        }
        let record = isFinal ? operations.remove(slot: userData.slot) : operations[userData.slot]
        if isFinal, let context = record.context {
            context._withUnsafeGuaranteedRef { context in
                if let handle = record.handle {
                    handle._withUnsafeGuaranteedRef { $0.inflightContexts.remove(context) }
                }
                context.endKernelFlight()
            }
        }
        var receivedBuffer: ReceivedBuffer?
        if entry.flags & IORING_CQE_F_BUFFER != 0, bufferRing != nil {
            let id = UInt16(truncatingIfNeeded: entry.flags >> UInt32(IORING_CQE_BUFFER_SHIFT))
            handOutBufferLocked(id)
            receivedBuffer = ReceivedBuffer(ring: Unmanaged.passUnretained(self), id: id, count: Int(max(entry.res, 0)))
        }
        let result: Int32
        if record.isZeroCopy && entry.flags & IORING_CQE_F_NOTIF != 0 {
            result = record.postedResult
        } else if (record.operation == .user || record.isInjected) && entry.res >= 0 {
            // A user post reports what was posted, unless its NOP was cancelled (port closing);
            // so does an injected fault when the kernel could not inject the result itself.
            result = record.postedResult
        } else {
            result = entry.res
        }
        counters.completions &+= 1
        if isFinal { counters.completedOperations &+= 1 }
        // The last CQE hands the record's references to the completion; an earlier one (of a
        // multishot operation) gives the completion references of its own.
        ready.append(
            Completion(
                operation: record.operation,
                result: result,
                flags: entry.flags,
                handle: isFinal ? record.handle?.takeRetainedValue() : record.handle?.takeUnretainedValue(),
                context: isFinal ? record.context?.takeRetainedValue() : record.context?.takeUnretainedValue(),
                userValue: record.userValue,
                receivedBuffer: receivedBuffer))
    }

    // MARK: Provided buffers

    /// The bytes of a provided buffer. The buffer ring is immutable once set up.
    func bufferRingBytes(of id: UInt16, count: Int) -> UnsafeRawBufferPointer {
        bufferRing!.bytes(of: id, count: count)
    }

    /// Gives a provided buffer back to the kernel at once, under the lock, on any thread.
    func recycleBufferNow(_ id: UInt16) {
        // The ring's own reference goes after the lock is released: it may be the last.
        lock.withLock { recycleBufferLocked(id) }?.release()
    }

    /// Whether the provided buffer ring has a buffer for the kernel to fill now, once the
    /// buffers the calling pool worker released and keeps for its next pass through the lock are
    /// back (they go back here). False without provided buffers.
    func hasFreeProvidedBuffer() -> Bool {
        lock.withLock {
            if let worker = CompletionWorker.poolWorkerOfCallingThread {
                worker._withUnsafeGuaranteedRef { $0.returnReleasedBuffersLocked(ofHomeRing: self) }
            }
            return withBufferRing { $0.outstanding < $0.count } ?? false
        }
    }

    /// Gives a provided buffer back to the kernel: on a pool worker's thread, for its own ring,
    /// with the worker's next pass through the lock; elsewhere at once.
    func recycleBuffer(_ id: UInt16) {
        // On a pool worker's thread, the worker returns it with the next pass through the lock.
        if let worker = CompletionWorker.poolWorkerOfCallingThread,
            worker._withUnsafeGuaranteedRef({ $0.deferReturn(ofBuffer: id, in: self) })
        {
            return
        }
        recycleBufferNow(id)
    }

    /// Gives the buffers `ids` back to the kernel. Returns the ring's reference to itself when
    /// they were the last held, for the caller to release (after the lock, unless it keeps the
    /// ring alive otherwise).
    func recycleBuffersLocked(_ ids: UnsafeBufferPointer<UInt16>) -> Unmanaged<Ring>? {
        var selfReference: Unmanaged<Ring>?
        for id in ids {
            if let reference = recycleBufferLocked(id) { selfReference = reference }
        }
        return selfReference
    }

    /// The kernel filled provided buffer `id`: the application owns it until it recycles it.
    /// While the application holds any buffer, the ring holds a reference to itself, so that a
    /// ``ReceivedBuffer`` (which does not retain it) can always reach it.
    private func handOutBufferLocked(_ id: UInt16) {
        let outstanding = withBufferRing { bufferRing in
            bufferRing.handOutLocked(id)
            return bufferRing.outstanding
        }
        if outstanding == 1 { selfWhileBuffersAreHeld = Unmanaged.passRetained(self) }
    }

    /// Gives buffer `id` back to the kernel. Returns the ring's reference to itself when that was
    /// the last buffer held, for the caller to release once it has let go of the lock.
    private func recycleBufferLocked(_ id: UInt16) -> Unmanaged<Ring>? {
        let outstanding = withBufferRing { bufferRing in
            bufferRing.recycleLocked(id)
            return bufferRing.outstanding
        }
        guard outstanding == 0 else { return nil }
        defer { selfWhileBuffersAreHeld = nil }
        return selfWhileBuffersAreHeld
    }

    /// Calls `body` with the provided buffer ring, borrowed (the ring's `let` keeps it); nil
    /// without one. Bound to a name (`guard let bufferRing`), it was retained and released
    /// around each use, twice per received message.
    @inline(__always)
    private func withBufferRing<Result>(_ body: (ProvidedBufferRing) -> Result) -> Result? {
        guard bufferRing != nil else { return nil }
        return Unmanaged.passUnretained(bufferRing.unsafelyUnwrapped)._withUnsafeGuaranteedRef(body)
    }

    // MARK: Dispatching

    /// Moves up to `budget` ready completions to `deliver`, skipping (deferring) completions
    /// of handles another worker is handling. Marks their handles as handled by `worker`.
    @inline(__always)
    func takeReadyLocked(
        budget: Int, worker: ObjectIdentifier, held: inout [IOHandle], deliver: (consuming Completion) -> Void
    ) -> Int {
        var taken = 0
        while taken < budget, let completion = ready.popFirst() {
            // The handle is read through the completion, which holds it: bound to a name of its
            // own, it was retained and released once more per completion.
            if completion.handle != nil {
                if let owner = completion.handle.unsafelyUnwrapped.handlingWorker {
                    if owner != worker {
                        let handle = completion.handle.unsafelyUnwrapped
                        handle.deferredCompletions.append(consume completion)
                        deferredCount += 1
                        continue
                    }
                } else {
                    completion.handle.unsafelyUnwrapped.handlingWorker = worker
                    held.append(completion.handle.unsafelyUnwrapped)
                }
            }
            if !completion.hasMore { completion.context?.endFlight() }
            deliver(consume completion)
            taken += 1
        }
        return taken
    }

    /// The worker is done with `handle`. Completions deferred meanwhile go to the same worker
    /// (up to `budget`, keeping the handle), the rest back to the front of the ready queue.
    func releaseLocked(
        _ handle: IOHandle, budget: inout Int, worker: ObjectIdentifier, held: inout [IOHandle],
        deliver: (consuming Completion) -> Void
    ) {
        if budget > 0, !handle.deferredCompletions.isEmpty {
            held.append(handle)
            while budget > 0, let completion = handle.deferredCompletions.popFirst() {
                deferredCount -= 1
                if !completion.hasMore { completion.context?.endFlight() }
                deliver(completion)
                budget -= 1
            }
            return
        }
        handle.handlingWorker = nil
        if !handle.deferredCompletions.isEmpty {
            while let completion = handle.deferredCompletions.popLast() {
                deferredCount -= 1
                ready.prepend(completion)
            }
            notifyLeaderLocked()
        }
    }

    // MARK: Cancellation

    /// Queues an `ASYNC_CANCEL` for the operation with `userData`. Its completion still arrives
    /// (as `ECANCELED` when the cancellation wins the race).
    func cancelLocked(userData: UInt64) throws(RingPortError) {
        guard queues.isOpen else { return }
        let target = UserData(rawValue: userData)
        if operations.contains(slot: target.slot, generation: target.generation) {
            operations[target.slot].cancelRequested = true
        }
        try enqueueLocked { entry in
            io_uring_prep_cancel64(entry, userData, 0)
            io_uring_sqe_set_data64(entry, UserData.cancelRequest.rawValue)
        }
    }

    /// Cancels every operation in flight on `handle`; returns how many there were.
    @discardableResult
    func cancelOperationsLocked(of handle: IOHandle) throws(RingPortError) -> Int {
        try handle.inflightContexts.forEach { context throws(RingPortError) in
            try cancelLocked(userData: context.userData)
        }
        return handle.inflightContexts.count
    }

    /// Closes `handle` unless it already is: queues cancellations of its operations, then an
    /// asynchronous close of its descriptor, behind every SQE already queued. The kernel looks a
    /// descriptor number up when it consumes an SQE, so the number stays valid for the operations
    /// queued before and cannot be handed out again while one of them still names it.
    func closeLocked(_ handle: IOHandle) {
        guard handle.markClosed() else { return }
        if handles.contains(slot: handle.id.slot, generation: handle.id.generation) {
            _ = handles.remove(slot: handle.id.slot)
        }
        let descriptor = handle.descriptor
        if isClosed {
            // The port is closing: every operation was cancelled and no SQE can be queued any
            // more, so no queued entry can name this descriptor.
            SystemCall.close(descriptor)
            return
        }
        do {
            try cancelOperationsLocked(of: handle)
            try enqueueLocked { entry in
                io_uring_prep_close(entry, descriptor)
                io_uring_sqe_set_data64(entry, UserData.closeRequest.rawValue)
            }
        } catch {
            // The ring no longer accepts submissions; close the descriptor here instead.
            logger.error("ring \(index): closing handle \(handle.id): \(error)")
            SystemCall.close(descriptor)
        }
    }

    /// `io_uring_enter` returned `EBADR`: the kernel dropped completions because it could not
    /// allocate room in its overflow list (it reports this once, then the flag clears). The
    /// operations concerned never complete; this is logged as an error and counted in
    /// ``CompletionPort/Statistics/droppedCompletions``.
    private func reportDroppedCompletionsLocked() {
        logger.error(
            """
            ring \(index): the kernel dropped \(droppedCompletionsLocked) completions (out of memory for its \
            overflow list)
            """
        )
    }

    // MARK: Closing

    /// The port closes: from now on nothing can be posted, associated or dequeued. Queues the
    /// cancellation of every operation in flight (the doorbell reads included) and submits.
    /// The caller stands in for the leader: no worker is attached any more.
    func beginClosingLocked() {
        isClosed = true
        for slot in operations.liveSlots {
            let generation = operations.generation(of: slot)
            try? cancelLocked(userData: UserData(slot: slot, generation: generation).rawValue)
        }
        cancelDoorbellReadsLocked()
        submitLoggingErrorsLocked()
    }

    /// After ``beginClosingLocked()``: waits until the kernel has completed every operation (at
    /// most until `deadline`), drops the completions nobody dequeued (closing the descriptors
    /// accepts produced, giving provided buffers back), closes the handles still open, and tears
    /// the io_uring instance down. If the kernel keeps operations past the deadline, their
    /// contexts are leaked on purpose rather than freed under the kernel.
    func drainAndCloseLocked(deadline: MonotonicInstant) {
        while true {
            // Handles closed meanwhile may have queued cancellations; submit them too.
            submitLoggingErrorsLocked()
            reapLocked()
            if operations.count == 0 && doorbellReads.isEmpty { break }
            let now = MonotonicInstant.now
            if now >= deadline {
                // The kernel still owns these buffers: keep them alive rather than free memory it may write.
                logger.error(
                    """
                    ring \(index): \(operations.count) operations did not complete at close; their contexts are \
                    kept alive
                    """
                )
                // Their records, which stay in the table (the ring is never freed before the
                // port), hold the references: nothing releases them.
                break
            }
            lock.unlock()
            _ = queues.enter(toSubmit: 0, waitFor: 1, timeout: min(now.nanoseconds(until: deadline), 100_000_000))
            lock.lock()
        }
        var dropped = 0
        func drop(_ completion: Completion) {
            if let descriptor = completion.acceptedDescriptor { SystemCall.close(descriptor) }
            // The port holds the ring while it closes: this is never its last reference.
            if let buffer = completion.receivedBuffer { recycleBufferLocked(buffer.id)?.release() }
            completion.context?.endFlight()
            dropped += 1
        }
        while let completion = ready.popFirst() { drop(completion) }
        for slot in handles.liveSlots {
            let handle = handles.remove(slot: slot)
            while let completion = handle.deferredCompletions.popFirst() {
                deferredCount -= 1
                drop(completion)
            }
            if handle.markClosed() { SystemCall.close(handle.descriptor) }
        }
        if dropped > 0 {
            logger.warning("ring \(index): \(dropped) completions were not dequeued before close")
        }
        leadership.close()
        closeIOURingLocked()
    }

    /// Completions the kernel dropped on this ring (its overflow list could not grow).
    var droppedCompletionsLocked: UInt64 {
        queues.isOpen ? UInt64(queues.droppedCompletions) : counters.droppedCompletionsAtClose
    }

    /// Tears the ring down once its operations have all completed, then closes the doorbell
    /// (after io_uring_queue_exit the kernel no longer reads it). Idempotent.
    private func closeIOURingLocked() {
        guard queues.isOpen else { return }
        counters.droppedCompletionsAtClose = droppedCompletionsLocked
        queues.close()
        SystemCall.close(doorbell)
    }
}
