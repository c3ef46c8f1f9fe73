import CLiburing
import DequeModule
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One ring of a completion port and everything that belongs to it: the handles it owns, the
/// operations its kernel ring holds, the completions reaped but not yet dequeued, and the
/// leadership of the workers attached to it.
///
/// A handle belongs to one shard for life, so every operation of a handle goes through one
/// ring, in the order it was posted, and its completions come back through one queue.
///
/// ## Threads
/// Everything below is guarded by ``lock``, except the leader's `io_uring_enter`, which runs
/// unlocked so that other threads can post while it waits.
///
/// At most one attached worker is the *leader*: the only thread that enters the kernel for
/// this ring while workers are attached. It submits, waits, reaps, and handles what it reaped.
/// The other attached workers park on ``lock``'s condition; one of them (the *sentry*) wakes
/// every ``stallThreshold`` and takes the leadership over when the leader has been inside one
/// completion's handler for longer than that.
///
/// Other threads never submit: they prepare their SQE (or queue it in ``overflow`` when the
/// submission queue is full) and ring the ``doorbell`` if the leader sleeps in the kernel. The
/// kernel ties an io_uring request to the thread that submitted it and cancels it when that
/// thread exits; submitting only from the port's workers keeps operations posted from
/// short-lived threads (a Swift concurrency pool thread, a request thread) alive.
final class Shard: @unchecked Sendable {
    // @unchecked: every mutable property is guarded by `lock` (see above); `doorbell` is an
    // immutable descriptor, and its buffer is written by the kernel only.
    //
    // Stored properties marked @exclusivity(unchecked) skip Swift's dynamic exclusivity checks:
    // every access is already serialised as described, and on the echo benchmark the checks
    // cost 12–14% of the server's CPU per message (measured with -enforce-exclusivity=unchecked
    // against the default build; docs/ARCHITECTURE.md).

    enum LeaderState: Equatable {
        /// No worker leads this ring.
        case none
        /// The leader is inside `io_uring_enter`, waiting for completions.
        case waitingInKernel
        /// The leader is handling completions.
        case running
    }

    struct Counters {
        var submitted: UInt64 = 0
        var completed: UInt64 = 0
        var completions: UInt64 = 0
        var stale: UInt64 = 0
        var internalCompletions: UInt64 = 0
        var enterCalls: UInt64 = 0
        var submissionQueueFull: UInt64 = 0
        var busyRetries: UInt64 = 0
        var takeovers: UInt64 = 0
        var submitErrors: UInt64 = 0
        var doorbells: UInt64 = 0
        /// The kernel's count of dropped completions, saved when the ring closes.
        var droppedAtClose: UInt64 = 0
    }

    let index: Int
    let ring: IOURing
    let lock = ConditionMutex()
    let logger: Logger
    let stallThreshold: UInt64
    /// An eventfd the leader keeps a read posted on, so that other threads can wake it.
    let doorbell: Int32
    /// Where the kernel writes the doorbell's 8-byte counter. Freed in `deinit`, after the ring.
    private let doorbellBuffer: UnsafeMutablePointer<UInt64>
    /// Provided buffers for multishot receives, when the port was configured with them and the
    /// kernel has buffer rings. Its accounting is guarded by `lock`.
    let bufferRing: ProvidedBufferRing?
    /// Operations to replace with NOPs completing with chosen results (tests only).
    let faultInjection: FaultInjection?

    // Guarded by `lock`.
    @exclusivity(unchecked) var operations: GenerationalTable<OperationRecord>
    @exclusivity(unchecked) var handles = GenerationalTable<IOHandle>()
    @exclusivity(unchecked) var ready = Deque<Completion>()
    /// SQEs prepared by non-leader threads while the submission queue was full, in order.
    @exclusivity(unchecked) var overflow = Deque<io_uring_sqe>()
    @exclusivity(unchecked) var leader: ObjectIdentifier?
    @exclusivity(unchecked) var leaderThread = pthread_t()
    @exclusivity(unchecked) var leaderState = LeaderState.none
    /// Counts the leader's returns from `dequeue` and from the kernel: the sentry sees a stalled
    /// leader as one whose count did not move for a whole stall threshold (no clock read on the
    /// hot path).
    @exclusivity(unchecked) var leaderProgress: UInt64 = 0
    /// How long the sentry sleeps: the stall threshold while the leader works, doubling up to
    /// 100 ms while it finds the leader idle in the kernel (an idle server barely wakes up).
    @exclusivity(unchecked) var sentryInterval: UInt64
    @exclusivity(unchecked) var attachedWorkers = 0
    @exclusivity(unchecked) var parkedWorkers = 0
    @exclusivity(unchecked) var sentryParked = false
    @exclusivity(unchecked) var isClosed = false
    /// The thread whose doorbell read is the current one, if one is armed. The kernel runs a
    /// request's completion work on the thread that submitted it, so a leader that took over
    /// arms a read of its own: the old leader may be stuck where that work cannot run.
    @exclusivity(unchecked) var doorbellArmedBy: pthread_t?
    /// Sequence numbers of the doorbell reads the kernel holds (usually one).
    @exclusivity(unchecked) var doorbellReads: [UInt32] = []
    @exclusivity(unchecked) private var doorbellSequence: UInt32 = 0
    @exclusivity(unchecked) var doorbellRung = false
    @exclusivity(unchecked) var counters = Counters()

    init(
        index: Int, ring: IOURing, bufferRing: ProvidedBufferRing?, stallThreshold: Duration,
        faultInjection: FaultInjection? = nil, logger: Logger
    ) throws(RingPortError) {
        let doorbell = eventfd(0, Int32(EFD_CLOEXEC))
        guard doorbell >= 0 else {
            throw RingPortError(.systemCallFailed, operation: "eventfd for ring \(index)", errno: Errno(rawValue: Glibc.errno))
        }
        self.index = index
        self.ring = ring
        self.bufferRing = bufferRing
        self.faultInjection = faultInjection
        self.stallThreshold = stallThreshold.nanosecondsClamped
        sentryInterval = self.stallThreshold
        self.logger = logger
        self.doorbell = doorbell
        doorbellBuffer = .allocate(capacity: 1)
        doorbellBuffer.initialize(to: 0)
        operations = GenerationalTable(reservingCapacity: Int(ring.completionEntries))
        ready.reserveCapacity(Int(ring.completionEntries))
    }

    deinit {
        closeRingLocked()
        doorbellBuffer.deallocate()
    }

    /// The leader returned with completions or from the kernel.
    @inline(__always)
    func leaderRan() {
        leaderState = .running
        leaderProgress &+= 1
    }

    /// Whether entries wait to be submitted (prepared, or in the overflow queue).
    var hasQueuedSubmissionsLocked: Bool {
        ring.unpublishedSubmissions > 0 || !overflow.isEmpty
    }

    /// Whether the calling thread is this ring's leader (and so may submit).
    @inline(__always)
    var callerIsLeaderLocked: Bool {
        if case .running = leaderState {
            return pthread_equal(leaderThread, pthread_self()) != 0
        }
        return false
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
        if let handle, handle.isClosed {
            throw RingPortError(.handleClosed, operation: "post \(operation) on handle \(handle.id)")
        }
        if let context, !context.beginFlight(onShard: index) {
            throw RingPortError(.contextInFlight, operation: "post \(operation)")
        }
        var record = OperationRecord(
            operation: operation, context: context, handle: handle,
            postedResult: postedResult, userValue: userValue, isZeroCopy: isZeroCopy)
        let injectedResult = faultInjection?.injectedResult(for: operation)
        if let injectedResult {
            record.isInjected = true
            record.isZeroCopy = false
            record.postedResult = injectedResult
        }
        let address = operations.insert(record)
        let userData = UserData(slot: address.slot, generation: address.generation)
        do {
            try enqueueLocked { entry in
                if let injectedResult {
                    faultInjection.unsafelyUnwrapped.prepareInjectedNOP(entry, result: injectedResult)
                } else {
                    prepare(entry)
                }
                io_uring_sqe_set_data64(entry, userData.rawValue)
            }
        } catch {
            _ = operations.remove(slot: address.slot)
            context?.endFlight()
            throw error
        }
        if let context {
            context.operation = operation
            context.userData = userData.rawValue
            if let handle {
                context.indexInHandle = handle.inflightContexts.count
                handle.inflightContexts.append(context)
            }
        }
        counters.submitted &+= 1
    }

    /// Fills one SQE with `fill` and queues it, keeping the order of everything queued before:
    /// straight into the submission queue when there is room, else (leader) after submitting
    /// to make room, else (any other thread) into ``overflow``. Wakes the leader if needed.
    @inline(__always)
    func enqueueLocked(_ fill: (UnsafeMutablePointer<io_uring_sqe>) -> Void) throws(RingPortError) {
        if callerIsLeaderLocked {
            fill(try nextSubmissionEntryLocked())
            return
        }
        if overflow.isEmpty, let entry = ring.nextSubmissionEntry() {
            fill(entry)
        } else {
            var entry = io_uring_sqe()
            fill(&entry)
            overflow.append(entry)
            counters.submissionQueueFull &+= 1
        }
        notifyLeaderLocked()
    }

    /// Makes sure somebody will submit what was queued: rings the doorbell when the leader sleeps
    /// in the kernel, signals a parked worker when nobody leads. A running leader submits on its
    /// next wait by itself.
    @inline(__always)
    func notifyLeaderLocked() {
        switch leaderState {
        case .waitingInKernel:
            ringDoorbellLocked()
        case .none:
            if parkedWorkers > 0 { lock.signal() }
        case .running:
            break
        }
    }

    /// Wakes the leader out of `io_uring_enter` (once per sleep).
    func ringDoorbellLocked() {
        guard !doorbellRung else { return }
        doorbellRung = true
        counters.doorbells &+= 1
        var one: UInt64 = 1
        _ = Glibc.write(doorbell, &one, MemoryLayout<UInt64>.size)
    }

    /// Posts the read on the doorbell that a write by another thread completes, unless this
    /// thread has one armed already. Leader only.
    func armDoorbellLocked() throws(RingPortError) {
        let me = pthread_self()
        if let armer = doorbellArmedBy, pthread_equal(armer, me) != 0 { return }
        let entry = try nextSubmissionEntryLocked()
        doorbellSequence = (doorbellSequence &+ 1) & 0x7FFF_FFFF
        io_uring_prep_read(entry, doorbell, doorbellBuffer, UInt32(MemoryLayout<UInt64>.size), 0)
        io_uring_sqe_set_data64(entry, UserData.doorbell(sequence: doorbellSequence).rawValue)
        doorbellArmedBy = me
        doorbellReads.append(doorbellSequence)
    }

    /// Queues cancellations of every doorbell read (when the port closes).
    func cancelDoorbellReadsLocked() {
        for sequence in doorbellReads {
            try? cancelLocked(userData: UserData.doorbell(sequence: sequence).rawValue)
        }
    }

    /// The next free SQE, after the overflowed ones. When the submission queue is full, submits
    /// what it holds first (never drops an entry). Leader (or a thread standing in for it) only.
    @inline(__always)
    func nextSubmissionEntryLocked() throws(RingPortError) -> UnsafeMutablePointer<io_uring_sqe> {
        while true {
            if overflow.isEmpty, let entry = ring.nextSubmissionEntry() {
                return entry
            }
            counters.submissionQueueFull &+= 1
            try submitLocked()
        }
    }

    /// Submits everything queued (overflow included), retrying while the kernel asks for
    /// completions to be reaped first (`EBUSY`, `EAGAIN`) or the call is interrupted.
    /// Leader (or a thread standing in for it: a worker serving an uncovered ring, ``CompletionPort/close()``) only.
    func submitLocked() throws(RingPortError) {
        guard ring.isOpen else { return }
        repeat {
            while !overflow.isEmpty, let entry = ring.nextSubmissionEntry() {
                entry.pointee = overflow.removeFirst()
            }
            try enterSubmittingLocked()
        } while !overflow.isEmpty
    }

    /// Submits and logs an error instead of throwing: the entries stay queued and the next
    /// `io_uring_enter` submits them again.
    func submitLoggingErrorsLocked() {
        do {
            try submitLocked()
        } catch {
            counters.submitErrors &+= 1
            logger.error("ring \(index): \(error)")
        }
    }

    private func enterSubmittingLocked() throws(RingPortError) {
        var pending = ring.flushSubmissions()
        var idleRounds = 0
        while pending > 0 {
            let result = ring.enter(toSubmit: pending, waitFor: 0, timeout: nil)
            counters.enterCalls &+= 1
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
                    if reapLocked() == 0 { sched_yield() }
                    pending = ring.flushSubmissions()
                    continue
                default:
                    throw RingPortError(
                        .submissionFailed, operation: "io_uring_enter(to_submit: \(pending)) on ring \(index)",
                        errno: Errno(rawValue: -result))
                }
            }
            let remaining = ring.flushSubmissions()
            if remaining >= pending && result == 0 {
                idleRounds += 1
                if idleRounds > 10_000 {
                    throw RingPortError(
                        .submissionFailed, operation: "io_uring_enter(to_submit: \(pending)) on ring \(index) makes no progress")
                }
                sched_yield()
            }
            pending = remaining
        }
    }

    // MARK: Reaping

    /// Moves every visible CQE into the ready queue and returns how many there were.
    @discardableResult
    func reapLocked() -> Int {
        guard ring.isOpen else { return 0 }
        var total = 0
        withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<io_uring_cqe>?.self, capacity: 64) { batch in
            while true {
                let count = ring.peekCompletions(into: batch)
                for position in 0..<count {
                    consumeLocked(batch[position].unsafelyUnwrapped.pointee)
                }
                ring.advanceCompletions(by: count)
                total += count
                if count < batch.count { break }
            }
        }
        return total
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
            counters.stale &+= 1
            logger.error("ring \(index): stale completion dropped (user_data \(entry.user_data), result \(entry.res))")
            return
        }
        let isFinal = entry.flags & IORING_CQE_F_MORE == 0
        if operations[userData.slot].isZeroCopy {
            // SEND_ZC: a result CQE (with F_MORE when a notification follows), then the
            // notification CQE once the kernel no longer needs the buffer. One completion is
            // delivered, at the end, with the first CQE's result.
            if !isFinal {
                operations[userData.slot].postedResult = entry.res
                return
            }
        }
        let record = isFinal ? operations.remove(slot: userData.slot) : operations[userData.slot]
        if isFinal, let context = record.context {
            if let handle = record.handle {
                removeInflight(context, from: handle)
            }
            context.endKernelFlight()
        }
        var receivedBuffer: ReceivedBuffer?
        if entry.flags & IORING_CQE_F_BUFFER != 0, let bufferRing {
            let id = UInt16(truncatingIfNeeded: entry.flags >> UInt32(IORING_CQE_BUFFER_SHIFT))
            bufferRing.handOutLocked(id)
            receivedBuffer = ReceivedBuffer(shard: self, id: id, count: Int(max(entry.res, 0)))
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
        if isFinal { counters.completed &+= 1 }
        ready.append(Completion(
            operation: record.operation,
            result: result,
            flags: entry.flags,
            handle: record.handle,
            context: record.context,
            userValue: record.userValue,
            receivedBuffer: receivedBuffer))
    }

    // MARK: Provided buffers

    /// The bytes of a provided buffer. The buffer ring is immutable once set up.
    func bufferRingBytes(of id: UInt16, count: Int) -> UnsafeRawBufferPointer {
        bufferRing!.bytes(of: id, count: count)
    }

    /// Gives a provided buffer back to the kernel.
    func recycleBuffer(_ id: UInt16) {
        lock.withLock { bufferRing!.recycleLocked(id) }
    }

    /// Provided buffers the application holds now.
    var buffersOutstandingLocked: Int {
        bufferRing?.outstanding ?? 0
    }

    private func removeInflight(_ context: IOContext, from handle: IOHandle) {
        let position = context.indexInHandle
        let last = handle.inflightContexts.removeLast()
        if last !== context {
            handle.inflightContexts[position] = last
            last.indexInHandle = position
        }
        context.indexInHandle = -1
    }

    // MARK: Dispatching

    /// Moves up to `budget` ready completions to `deliver`, skipping (deferring) completions
    /// of handles another worker is handling. Marks their handles as handled by `worker`.
    @inline(__always)
    func takeReadyLocked(
        budget: Int, worker: ObjectIdentifier, held: inout [IOHandle], deliver: (Completion) -> Void
    ) -> Int {
        var taken = 0
        while taken < budget, let completion = ready.popFirst() {
            if let handle = completion.handle {
                if let owner = handle.handlingWorker {
                    if owner != worker {
                        handle.deferredCompletions.append(completion)
                        continue
                    }
                } else {
                    handle.handlingWorker = worker
                    held.append(handle)
                }
            }
            if !completion.hasMore { completion.context?.endFlight() }
            deliver(completion)
            taken += 1
        }
        return taken
    }

    /// The worker is done with `handle`. Completions deferred meanwhile go to the same worker
    /// (up to `budget`, keeping the handle), the rest back to the front of the ready queue.
    func releaseLocked(
        _ handle: IOHandle, budget: inout Int, worker: ObjectIdentifier, held: inout [IOHandle],
        deliver: (Completion) -> Void
    ) {
        if budget > 0, !handle.deferredCompletions.isEmpty {
            held.append(handle)
            while budget > 0, let completion = handle.deferredCompletions.popFirst() {
                if !completion.hasMore { completion.context?.endFlight() }
                deliver(completion)
                budget -= 1
            }
            return
        }
        handle.handlingWorker = nil
        if !handle.deferredCompletions.isEmpty {
            while let completion = handle.deferredCompletions.popLast() {
                ready.prepend(completion)
            }
            notifyLeaderLocked()
        }
    }

    // MARK: Cancellation

    /// Queues an `ASYNC_CANCEL` for the operation with `userData`. Its completion still arrives
    /// (as `ECANCELED` when the cancellation wins the race).
    func cancelLocked(userData: UInt64) throws(RingPortError) {
        guard ring.isOpen else { return }
        try enqueueLocked { entry in
            io_uring_prep_cancel64(entry, userData, 0)
            io_uring_sqe_set_data64(entry, UserData.cancelRequest.rawValue)
        }
    }

    /// Cancels every operation in flight on `handle`; returns how many there were.
    @discardableResult
    func cancelOperationsLocked(of handle: IOHandle) throws(RingPortError) -> Int {
        for context in handle.inflightContexts {
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
            Glibc.close(descriptor)
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
            Glibc.close(descriptor)
        }
    }

    /// `io_uring_enter` returned `EBADR`: the kernel dropped completions because it could not
    /// allocate room in its overflow list (it reports this once, then the flag clears). The
    /// operations concerned never complete; this is logged as an error and counted in
    /// ``CompletionPort/Statistics/droppedCompletions``.
    func reportDroppedCompletionsLocked() {
        logger.error("ring \(index): the kernel dropped \(droppedCompletionsLocked) completions (out of memory for its overflow list)")
    }

    // MARK: Closing

    /// Completions the kernel dropped on this ring (its overflow list could not grow).
    var droppedCompletionsLocked: UInt64 {
        ring.isOpen ? UInt64(ring.droppedCompletions) : counters.droppedAtClose
    }

    /// Tears the ring down once its operations have all completed, then closes the doorbell
    /// (after io_uring_queue_exit the kernel no longer reads it). Idempotent.
    func closeRingLocked() {
        guard ring.isOpen else { return }
        counters.droppedAtClose = droppedCompletionsLocked
        ring.close()
        Glibc.close(doorbell)
    }
}
