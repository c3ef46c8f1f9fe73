import CLiburing
import DequeModule
import Glibc

/// io_uring's queues in user space, performed over epoll: the backend for hosts that refuse
/// io_uring (a container's default seccomp profile, `kernel.io_uring_disabled`).
///
/// The ring above it is unchanged: it prepares the same SQEs, reaps the same CQEs, and its
/// leader is the one thread that waits here. What the kernel does behind `io_uring_enter`, this
/// class does in ``enter(toSubmit:waitFor:timeout:)``:
///
/// - **Submitting** performs each SQE at once the way io_uring first tries it, without blocking:
///   a receive, send, accept or connect that cannot finish yet waits in its descriptor's queue
///   (``DescriptorTable``) and the descriptor is registered with epoll, edge-triggered, for both
///   directions, once. A receive is tried at once only while no `EAGAIN` was met since the last
///   readiness event (and a short receive on a stream socket counts as one), so a receive that
///   would fail is not issued.
/// - **Waiting** is `epoll_pwait2` (nanosecond timeouts; `epoll_wait` where it is missing) until
///   the caller's timeout or the next timer; each readiness event runs the waiting operations of
///   that descriptor and direction, in order, until one would block.
/// - **Timeouts** (`IORING_OP_TIMEOUT`, absolute or relative, on `CLOCK_MONOTONIC`) are a heap
///   whose earliest deadline bounds the wait; **cancellation** (`IORING_OP_ASYNC_CANCEL`) takes a
///   waiting operation out of its queue, a timer out of the heap, or a file job out of the pool's
///   queue, and completes it with `ECANCELED` (a running file job: `EALREADY`); **close** completes
///   what still waits on the descriptor with `ECANCELED`, unregisters it, and closes it.
/// - **Positioned reads and writes of regular files**, which epoll cannot wait for, go to a
///   ``FileOperationPool``.
/// - NOPs complete at once (with the injected result, for ``FaultInjection``).
///
/// What io_uring does and epoll cannot — multishot accept and receive, provided buffers, linked
/// requests — completes with `EINVAL`; ``CompletionPort/features`` reports it absent, so that
/// callers take their other paths. A zero-copy send is performed as a plain send.
///
/// Receives and sends pass `MSG_DONTWAIT` (sends also `MSG_NOSIGNAL`), so sockets keep their
/// blocking mode; listeners, connecting sockets and the descriptors read or written with
/// `IORING_OP_READ`/`WRITE` (pipes, eventfds) are switched to non-blocking mode the first time.
///
/// ## Threads
/// The submission side (``nextSubmissionEntry()``, ``flushSubmissions()``) is serialised by the
/// ring's lock, as with io_uring. Everything an enter touches — published SQEs, the descriptor
/// table, the timers — is guarded by `engineLock`, released only around the wait itself, so
/// that threads entering at once (a leader and a stand-in) take turns. Completions go to a
/// ``UserCompletionQueue``, which has its own lock. Lock order: the ring's lock, `engineLock`, the
/// pool's lock, the completion queue's.
///
/// Ownership: the staging SQEs, the epoll instance and the wake-up eventfd are created here and
/// released by ``close()``; the buffers that SQEs point at belong to the operations' contexts,
/// which the ring keeps alive until the completion.
final class EpollRing: RingQueues {
    /// The epoll tag of the wake-up eventfd (descriptor tags are non-negative `Int32`s).
    private static let wakeTag = UInt64.max
    /// Readiness events taken per wait.
    private static let eventCapacity = 128
    /// How long ``close()`` waits for the file pool's threads. The ring has waited for its
    /// operations before (10 s), so a thread still busy then is stuck (a hung mount).
    private static let fileThreadsStopTimeout = Duration.seconds(1)
    /// The epoll events every descriptor is registered for. `EPOLLPRI`: TCP urgent data, at
    /// whose mark a receive stops short with bytes still queued (see `Descriptor.sawUrgentData`).
    private static let registeredEvents =
        CLiburing_EPOLLIN | CLiburing_EPOLLPRI | CLiburing_EPOLLOUT | CLiburing_EPOLLRDHUP | CLiburing_EPOLLET
    private static let readEvents =
        CLiburing_EPOLLIN | CLiburing_EPOLLPRI | CLiburing_EPOLLRDHUP | CLiburing_EPOLLHUP | CLiburing_EPOLLERR
    private static let writeEvents = CLiburing_EPOLLOUT | CLiburing_EPOLLHUP | CLiburing_EPOLLERR
    private static let endEvents = CLiburing_EPOLLRDHUP | CLiburing_EPOLLHUP | CLiburing_EPOLLERR

    // Submission side: guarded by the ring's lock.
    private let staging: UnsafeMutablePointer<io_uring_sqe>
    @exclusivity(unchecked) private var stagedCount: UInt32 = 0

    // Engine: guarded by `engineLock`.
    private let engineLock = ConditionMutex()
    @exclusivity(unchecked) private var published = Deque<io_uring_sqe>()
    @exclusivity(unchecked) private var descriptors = DescriptorTable()
    @exclusivity(unchecked) private var timers = TimerHeap()
    /// The duplicate that the file jobs of each descriptor share (see ``FileOperationPool``),
    /// held weakly: it closes when its last job ends. Forgotten when the descriptor number is
    /// closed through the ring or associated again (then it may name another file).
    @exclusivity(unchecked) private var fileDuplicates: [Int32: WeakFileDuplicate] = [:]
    /// Completions produced under `engineLock`, posted together.
    @exclusivity(unchecked) private var produced: [io_uring_cqe] = []
    /// Whether `epoll_pwait2` is there (cleared on the first `ENOSYS`).
    @exclusivity(unchecked) private var waitsWithTimespec = true
    @exclusivity(unchecked) private var isSetUp = true

    private let epoll: Int32
    private let wakeDescriptor: Int32
    private let completions: UserCompletionQueue
    private let files: FileOperationPool

    /// Sets up the queues: `entries` SQEs that can wait to be published, `completionEntries` CQE
    /// slots (more completions wait in an overflow list).
    ///
    /// - Throws: ``RingPortError/Code/systemCallFailed`` when `epoll_create1` or `eventfd` fails.
    init(entries: UInt32, completionEntries: UInt32) throws(RingPortError) {
        let epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        try SystemCall.check(epoll, "epoll_create1")
        let wakeDescriptor = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        if wakeDescriptor < 0 {
            let error = RingPortError(
                .systemCallFailed, operation: "eventfd for the epoll backend", errno: .init(rawValue: Glibc.errno))
            SystemCall.close(epoll)
            throw error
        }
        let registered = CLiburing_epoll_register(epoll, wakeDescriptor, CLiburing_EPOLLIN, Self.wakeTag)
        if registered < 0 {
            SystemCall.close(wakeDescriptor)
            SystemCall.close(epoll)
            throw RingPortError(
                .systemCallFailed, operation: "epoll_ctl(ADD) of the wake-up eventfd",
                errno: .init(rawValue: -registered))
        }
        self.epoll = epoll
        self.wakeDescriptor = wakeDescriptor
        staging = .allocate(capacity: Int(entries))
        staging.initialize(repeating: io_uring_sqe(), count: Int(entries))
        let completions = UserCompletionQueue(capacity: completionEntries)
        self.completions = completions
        files = FileOperationPool(threadCount: 2, completions: completions) {
            SystemCall.signalEventCounter(wakeDescriptor)
        }
        produced.reserveCapacity(Self.eventCapacity)
        super.init(backend: .epoll, submissionEntries: entries, completionEntries: completionEntries)
    }

    deinit {
        close()
        staging.deallocate()
    }

    override var bindsRequestsToSubmitter: Bool { false }
    override var completesWithoutEntering: Bool { false }
    override var isOpen: Bool { isSetUp }

    /// Stops the file pool, closes the epoll instance and the wake-up eventfd. Operations still
    /// waiting are dropped (the ring has drained what it could); a file read or write still
    /// running after ``fileThreadsStopTimeout`` is left to end on its own thread.
    override func close() {
        guard isSetUp else { return }
        isSetUp = false
        files.stop(waitingAtMost: Self.fileThreadsStopTimeout)
        SystemCall.close(epoll)
        SystemCall.close(wakeDescriptor)
    }

    // MARK: Submission side (the ring's lock)

    @inline(__always)
    override func nextSubmissionEntry() -> UnsafeMutablePointer<io_uring_sqe>? {
        guard stagedCount < submissionEntries else { return nil }
        let entry = staging + Int(stagedCount)
        stagedCount &+= 1
        entry.initialize(to: io_uring_sqe())
        return entry
    }

    override func flushSubmissions() -> UInt32 {
        engineLock.withLock {
            if stagedCount > 0 {
                published.append(contentsOf: UnsafeBufferPointer(start: staging, count: Int(stagedCount)))
                stagedCount = 0
            }
            return UInt32(published.count)
        }
    }

    override var unpublishedSubmissions: UInt32 { stagedCount }

    override func descriptorAssociated(_ descriptor: Int32) {
        engineLock.withLock {
            // Anything left from an earlier descriptor with this number (closed without
            // IORING_OP_CLOSE) is stale; the kernel removed it from the epoll set when it closed.
            forgetLocked(descriptor)
            postProducedLocked()
        }
    }

    // MARK: Completion side (the ring's lock)

    override func peekCompletions(into buffer: UnsafeMutableBufferPointer<UnsafeMutablePointer<io_uring_cqe>?>) -> Int {
        completions.peek(into: buffer)
    }

    override func advanceCompletions(by count: Int) {
        completions.advance(by: count)
    }

    override var droppedCompletions: UInt32 { 0 }

    // MARK: Entering

    override func enter(toSubmit: UInt32, waitFor: UInt32, timeout: UInt64?) -> Int32 {
        engineLock.lock()
        var consumed: Int32 = 0
        while consumed < Int32(clamping: toSubmit), let entry = published.popFirst() {
            performLocked(entry)
            consumed += 1
        }
        expireTimersLocked()
        postProducedLocked()
        guard waitFor > 0 else {
            engineLock.unlock()
            return consumed
        }
        // Wait for readiness unless completions are visible already; never past the next timer.
        var wait: Int64 = completions.count > 0 ? 0 : timeout.map { Int64(clamping: $0) } ?? -1
        if let deadline = timers.earliestDeadline {
            let now = MonotonicInstant.now.nanoseconds
            let untilTimer = Int64(clamping: deadline > now ? deadline - now : 0)
            wait = wait < 0 ? untilTimer : min(wait, untilTimer)
        }
        let withTimespec = waitsWithTimespec
        engineLock.unlock()
        let result = withUnsafeTemporaryAllocation(
            byteCount: Self.eventCapacity * CLiburing_epoll_event_size, alignment: 8
        ) { buffer -> Int32 in
            let events = buffer.baseAddress!.assumingMemoryBound(to: epoll_event.self)
            var count = CLiburing_epoll_wait(epoll, events, Int32(Self.eventCapacity), wait, withTimespec ? 1 : 0)
            engineLock.lock()
            // Missing (before 5.11), or filtered by a seccomp profile that predates it: those
            // answer ENOSYS or EPERM, which epoll_pwait2 itself never returns here.
            if (count == -ENOSYS || count == -EPERM) && withTimespec {
                waitsWithTimespec = false
                engineLock.unlock()
                count = CLiburing_epoll_wait(epoll, events, Int32(Self.eventCapacity), wait, 0)
                engineLock.lock()
            }
            for index in 0..<max(count, 0) {
                handleEventLocked(
                    flags: CLiburing_epoll_event_flags(events, index), tag: CLiburing_epoll_event_data(events, index))
            }
            return count
        }
        expireTimersLocked()
        postProducedLocked()
        engineLock.unlock()
        return result < 0 && result != -EINTR ? result : consumed
    }

    // MARK: Performing one SQE (engineLock held)

    private func performLocked(_ entry: io_uring_sqe) {
        // Linked, drained, fixed-file, buffer-selecting or completion-skipping requests are
        // io_uring's alone (RingPort never sends them here: the features say so).
        guard entry.flags == 0 else {
            complete(entry.user_data, -EINVAL)
            return
        }
        switch UInt32(entry.opcode) {
        case IORING_OP_NOP.rawValue:
            let injects = entry.rw_flags & CLiburing_IORING_NOP_INJECT_RESULT != 0
            complete(entry.user_data, injects ? Int32(bitPattern: entry.len) : 0)
        case IORING_OP_RECV.rawValue, IORING_OP_RECVMSG.rawValue, IORING_OP_ACCEPT.rawValue:
            // Multishot (ioprio flags) and direct descriptors are io_uring's.
            guard entry.ioprio == 0, entry.file_index == 0 else { return complete(entry.user_data, -EINVAL) }
            startLocked(entry, .read)
        case IORING_OP_SEND.rawValue, IORING_OP_SENDMSG.rawValue, IORING_OP_CONNECT.rawValue:
            guard entry.ioprio == 0 else { return complete(entry.user_data, -EINVAL) }
            startLocked(entry, .write)
        case IORING_OP_SEND_ZC.rawValue:
            // A plain send: one completion with the bytes sent, after which the buffer is the
            // caller's again (which is all a zero-copy send promises).
            guard entry.ioprio == 0 else { return complete(entry.user_data, -EINVAL) }
            startLocked(entry, .write)
        case IORING_OP_READ.rawValue, IORING_OP_WRITE.rawValue:
            let direction: DescriptorTable.Direction = UInt32(entry.opcode) == IORING_OP_READ.rawValue ? .read : .write
            if kindLocked(of: entry.fd) == .file {
                submitFileJobLocked(entry, isWrite: direction == .write)
            } else {
                startLocked(entry, direction)
            }
        case IORING_OP_TIMEOUT.rawValue:
            addTimerLocked(entry)
        case IORING_OP_ASYNC_CANCEL.rawValue:
            cancelLocked(entry)
        case IORING_OP_CLOSE.rawValue:
            closeLocked(entry)
        default:
            complete(entry.user_data, -EINVAL)
        }
    }

    /// What a descriptor is (looked up once, until it is closed or associated again).
    private func kindLocked(of descriptor: Int32) -> DescriptorTable.Kind {
        var state = descriptors[descriptor]
        if state.kind == .unknown {
            state.kind = DescriptorTable.Kind(of: descriptor)
            descriptors[descriptor] = state
        }
        return state.kind
    }

    /// Tries a readiness operation at once, unless others of its direction wait before it or the
    /// descriptor met `EAGAIN` since its last event; otherwise queues it and registers the
    /// descriptor.
    private func startLocked(_ entry: io_uring_sqe, _ direction: DescriptorTable.Direction) {
        let descriptor = entry.fd
        let kind = kindLocked(of: descriptor)
        if Self.needsNonBlockingMode(entry.opcode) { makeNonBlockingLocked(descriptor) }
        var state = descriptors[descriptor]
        var isConnecting = false
        if !descriptors.hasWaiting(direction, on: descriptor) && state.mayTry(direction) {
            let attempt = ReadinessAttempt.perform(entry, kind: kind, isConnecting: false)
            _ = state.record(attempt, direction)
            switch attempt {
            case .completed(let result, _):
                descriptors[descriptor] = state
                complete(entry.user_data, result)
                if direction == .read { failConnectWhoseErrorWasTakenLocked(on: descriptor, by: result) }
                return
            case .wouldBlock:
                break
            case .connecting:
                isConnecting = true
            }
        }
        if !state.isRegistered {
            let result = CLiburing_epoll_register(
                epoll, descriptor, Self.registeredEvents, UInt64(UInt32(bitPattern: descriptor)))
            guard result == 0 else {
                descriptors[descriptor] = state
                return complete(entry.user_data, result)
            }
            state.isRegistered = true
        }
        descriptors[descriptor] = state
        descriptors.wait(
            .init(entry: entry, descriptor: descriptor, direction: direction, isConnecting: isConnecting))
    }

    /// Accepts, connects and plain reads and writes need the descriptor in non-blocking mode;
    /// receives and sends pass `MSG_DONTWAIT` instead.
    private static func needsNonBlockingMode(_ opcode: UInt8) -> Bool {
        switch UInt32(opcode) {
        case IORING_OP_ACCEPT.rawValue, IORING_OP_CONNECT.rawValue, IORING_OP_READ.rawValue,
            IORING_OP_WRITE.rawValue:
            true
        default:
            false
        }
    }

    private func makeNonBlockingLocked(_ descriptor: Int32) {
        var state = descriptors[descriptor]
        guard !state.isNonBlocking else { return }
        let flags = fcntl(descriptor, F_GETFL)
        if flags >= 0 && flags & O_NONBLOCK == 0 {
            _ = fcntl(descriptor, F_SETFL, flags | O_NONBLOCK)
        }
        state.isNonBlocking = true
        descriptors[descriptor] = state
    }

    /// A readiness event: runs the operations waiting on that descriptor in the ready direction(s).
    private func handleEventLocked(flags: UInt32, tag: UInt64) {
        if tag == Self.wakeTag {
            var counter: UInt64 = 0
            _ = read(wakeDescriptor, &counter, MemoryLayout<UInt64>.size)
            return
        }
        let descriptor = Int32(truncatingIfNeeded: tag)
        var state = descriptors[descriptor]
        guard state.isRegistered else { return }
        let readable = flags & Self.readEvents != 0
        let writable = flags & Self.writeEvents != 0
        if readable { state.mayRead = true }
        if writable { state.mayWrite = true }
        if flags & Self.endEvents != 0 { state.readEnded = true }
        if flags & CLiburing_EPOLLPRI != 0 { state.sawUrgentData = true }
        descriptors[descriptor] = state
        if readable { runWaitingLocked(.read, on: descriptor) }
        if writable { runWaitingLocked(.write, on: descriptor) }
    }

    /// Performs the operations waiting on `descriptor` in `direction`, in order, until one would
    /// block.
    private func runWaitingLocked(_ direction: DescriptorTable.Direction, on descriptor: Int32) {
        while let operation = descriptors.first(direction, on: descriptor) {
            let kind = descriptors[descriptor].kind
            let attempt = ReadinessAttempt.perform(operation.entry, kind: kind, isConnecting: operation.isConnecting)
            let mayGoOn = descriptors[descriptor].record(attempt, direction)
            switch attempt {
            case .completed(let result, _):
                descriptors.removeFirst(direction, on: descriptor)
                complete(operation.entry.user_data, result)
                if direction == .read { failConnectWhoseErrorWasTakenLocked(on: descriptor, by: result) }
            case .wouldBlock:
                break
            case .connecting:
                descriptors.markFirstWriterConnecting(on: descriptor)
            }
            guard mayGoOn else { return }
        }
    }

    /// A read or receive on `descriptor` completed with `result`. When it failed while a connect
    /// waits on the same socket, it may have taken the error of the failed connection attempt
    /// (`SO_ERROR` is read once): the connect then completes with that error too, instead of
    /// waiting for an event that never comes (see ``ReadinessAttempt/connectResult(_:afterReadFailedWith:)``).
    private func failConnectWhoseErrorWasTakenLocked(on descriptor: Int32, by result: Int32) {
        guard result < 0, result != -ECANCELED,
            let connect = descriptors.first(.write, on: descriptor), connect.isConnecting,
            let connectResult = ReadinessAttempt.connectResult(descriptor, afterReadFailedWith: result)
        else { return }
        descriptors.removeFirst(.write, on: descriptor)
        complete(connect.entry.user_data, connectResult)
    }

    // MARK: Files, timers, cancellation, close (engineLock held)

    private func submitFileJobLocked(_ entry: io_uring_sqe, isWrite: Bool) {
        // The job works on a duplicate, the one the descriptor's other jobs hold if any is left
        // (see FileOperationPool).
        let duplicate: FileOperationPool.SharedDuplicate
        if let shared = fileDuplicates[entry.fd]?.duplicate {
            duplicate = shared
        } else {
            let descriptor = fcntl(entry.fd, F_DUPFD_CLOEXEC, 0)
            guard descriptor >= 0 else { return complete(entry.user_data, -Glibc.errno) }
            duplicate = FileOperationPool.SharedDuplicate(owning: descriptor)
            fileDuplicates[entry.fd] = WeakFileDuplicate(duplicate: duplicate)
        }
        let job = FileOperationPool.Job(
            userData: entry.user_data, isWrite: isWrite, file: duplicate,
            buffer: UnsafeMutableRawPointer(bitPattern: UInt(entry.addr)), count: Int(entry.len),
            offset: entry.off == UInt64.max ? -1 : Int64(bitPattern: entry.off))
        // A job that could not be queued lets its duplicate go with it.
        if let error = files.enqueue(job) {
            complete(entry.user_data, error)
        }
    }

    private func addTimerLocked(_ entry: io_uring_sqe) {
        // Absolute or relative on CLOCK_MONOTONIC, no completion count: what the port posts.
        guard entry.off == 0, entry.timeout_flags & ~UInt32(IORING_TIMEOUT_ABS) == 0,
            let time = UnsafePointer<__kernel_timespec>(bitPattern: UInt(entry.addr))
        else {
            return complete(entry.user_data, -EINVAL)
        }
        let nanoseconds = UInt64(max(time.pointee.tv_sec, 0)) &* 1_000_000_000 &+ UInt64(max(time.pointee.tv_nsec, 0))
        let deadline =
            entry.timeout_flags & UInt32(IORING_TIMEOUT_ABS) != 0
            ? nanoseconds : MonotonicInstant.now.nanoseconds &+ nanoseconds
        timers.insert(.init(deadline: deadline, userData: entry.user_data))
    }

    private func expireTimersLocked() {
        guard !timers.isEmpty else { return }
        let now = MonotonicInstant.now.nanoseconds
        while let timer = timers.popExpired(now: now) {
            complete(timer.userData, -ETIME)
        }
    }

    private func cancelLocked(_ entry: io_uring_sqe) {
        guard entry.cancel_flags == 0 else { return complete(entry.user_data, -EINVAL) }
        let target = entry.addr
        let isFirstInItsQueue = descriptors.isFirstInItsQueue(userData: target)
        if let waiting = descriptors.remove(userData: target) {
            // A receive gets one last try first: data that arrived since the last readiness
            // event is taken rather than left behind a cancellation, as the kernel completes a
            // request whose data is there before the cancellation reaches it. Only the first
            // receive waiting on the descriptor: one behind another would take the bytes ahead
            // of it. A send does not: its cancellation wins unless it already sent (as a send
            // waiting for room does in io_uring), so that a cancelled send leaves the socket as
            // it was.
            let kind = descriptors[waiting.descriptor].kind
            if waiting.direction == .read, isFirstInItsQueue,
                case .completed(let result, _) = ReadinessAttempt.perform(
                    waiting.entry, kind: kind, isConnecting: waiting.isConnecting)
            {
                complete(target, result)
                complete(entry.user_data, -ENOENT)
                failConnectWhoseErrorWasTakenLocked(on: waiting.descriptor, by: result)
            } else {
                complete(target, -ECANCELED)
                complete(entry.user_data, 0)
            }
            return
        }
        if timers.remove(userData: target) {
            complete(target, -ECANCELED)
            complete(entry.user_data, 0)
            return
        }
        switch files.cancel(userData: target) {
        case .removed:
            complete(target, -ECANCELED)
            complete(entry.user_data, 0)
        case .running:
            complete(entry.user_data, -EALREADY)
        case .notFound:
            complete(entry.user_data, -ENOENT)
        }
    }

    private func closeLocked(_ entry: io_uring_sqe) {
        guard entry.file_index == 0 else { return complete(entry.user_data, -EINVAL) }
        let descriptor = entry.fd
        if descriptors[descriptor].isRegistered {
            _ = CLiburing_epoll_unregister(epoll, descriptor)
        }
        forgetLocked(descriptor)
        // The operation's result is its completion's, as io_uring's close reports it: not
        // SystemCall.close, which treats EBADF as the caller's bug.
        complete(entry.user_data, Glibc.close(descriptor) == 0 ? 0 : -Glibc.errno)
    }

    /// Forgets what is known of descriptor number `descriptor`, which is closed or names
    /// another file now: its waiting operations complete with `ECANCELED`, and its file jobs'
    /// shared duplicate is not handed to later jobs (running ones keep it; the next job of this
    /// number duplicates what the number names then).
    private func forgetLocked(_ descriptor: Int32) {
        for operation in descriptors.removeAll(on: descriptor) {
            complete(operation.entry.user_data, -ECANCELED)
        }
        fileDuplicates[descriptor] = nil
    }

    // MARK: Completions (engineLock held)

    @inline(__always)
    private func complete(_ userData: UInt64, _ result: Int32) {
        var entry = io_uring_cqe()
        entry.user_data = userData
        entry.res = result
        produced.append(entry)
    }

    private func postProducedLocked() {
        guard !produced.isEmpty else { return }
        produced.withUnsafeBufferPointer { completions.post($0) }
        produced.removeAll(keepingCapacity: true)
    }
}

/// A weak reference to a file's shared duplicate (see ``FileOperationPool/SharedDuplicate``).
struct WeakFileDuplicate {
    weak var duplicate: FileOperationPool.SharedDuplicate?
}
