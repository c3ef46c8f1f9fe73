import CLiburing
import Glibc
import SystemPackage

/// One io_uring instance: the submission and completion queues and the calls that move
/// entries through them.
///
/// Thread-safety: none of its own. Preparing SQEs and flushing (``nextSubmissionEntry()``,
/// ``flushSubmissions()``) and reaping (``peekCompletions(into:)``, ``advanceCompletions(by:)``)
/// must be serialised by the caller (``Ring`` holds its lock). ``enter(toSubmit:waitFor:timeout:)``
/// may run without that lock, concurrently with the others: the kernel serialises its side, and
/// the user-space queue state it depends on was published by ``flushSubmissions()``.
///
/// Ownership: the `io_uring` struct is allocated here and freed in `deinit`, after
/// `io_uring_queue_exit` unmapped the queues. Pointers into it never outlive the call that
/// produced them.
final class IOURing: RingQueues {
    private let ring: UnsafeMutablePointer<io_uring>
    /// The kernel's `IORING_FEAT_*` bits.
    let features: UInt32
    /// The `IORING_SETUP_*` flags the ring was created with.
    let setupFlags: UInt32
    /// The file descriptor of the ring.
    let descriptor: Int32

    /// The flag sets tried in order: the cheapest task-run mode first, then without it for
    /// kernels older than 5.19, then without SUBMIT_ALL for kernels older than 5.18.
    private static let setupFlagCandidates: [UInt32] = [
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        IORING_SETUP_SUBMIT_ALL,
        0,
    ]

    /// Sets up a ring with `entries` submission entries and `completionEntries` completion
    /// entries (rounded up to powers of two by the kernel).
    ///
    /// - Throws: ``RingPortError`` with code ``RingPortError/Code/ioURingUnavailable`` and the
    ///   cause when the kernel refuses, or when the ring lacks `IORING_FEAT_NODROP` or
    ///   `IORING_FEAT_EXT_ARG`.
    /// - Parameters:
    ///   - setupHook: test seam: answers `io_uring_setup` for the given flags (nil: ask the kernel).
    ///   - hiddenFeatures: test seam: `IORING_FEAT_*` bits to treat as absent.
    init(
        entries: UInt32, completionEntries: UInt32,
        setupHook: ((UInt32) -> Int32?)? = nil, hiddenFeatures: UInt32 = 0
    ) throws(RingPortError) {
        ring = .allocate(capacity: 1)
        var lastError: Int32 = 0
        var created: io_uring_params?
        for flags in Self.setupFlagCandidates {
            var parameters = io_uring_params()
            parameters.flags = flags | IORING_SETUP_CQSIZE
            parameters.cq_entries = completionEntries
            let result = setupHook?(flags) ?? io_uring_queue_init_params(entries, ring, &parameters)
            if result == 0 {
                created = parameters
                break
            }
            lastError = -result
            // EINVAL may mean "unknown flag": try the next, more conservative set.
            if lastError != EINVAL { break }
        }
        guard let parameters = created else {
            ring.deallocate()
            let errno = Errno(rawValue: lastError)
            throw RingPortError(
                .ioURingUnavailable,
                operation: "io_uring_setup(entries: \(entries), cq_entries: \(completionEntries))",
                errno: errno,
                unavailability: .classify(
                    errno, ioURingDisabledSetting: IOURingUnavailability.readIOURingDisabledSetting()))
        }
        features = parameters.features & ~hiddenFeatures
        setupFlags = parameters.flags
        descriptor = ring.pointee.ring_fd
        super.init(
            backend: .ioURing, submissionEntries: parameters.sq_entries, completionEntries: parameters.cq_entries)

        var missing: [String] = []
        if features & IORING_FEAT_NODROP == 0 { missing.append("IORING_FEAT_NODROP (5.5)") }
        if features & IORING_FEAT_EXT_ARG == 0 { missing.append("IORING_FEAT_EXT_ARG (5.11)") }
        if !missing.isEmpty {
            // Every property is set, so deinit runs after this throw: it frees the ring.
            close()
            throw RingPortError(
                .ioURingUnavailable, operation: "io_uring_setup",
                unavailability: .missingFeatures(missing.joined(separator: ", ")))
        }
    }

    /// The kernel runs a request's completion work on the thread that submitted it.
    override var bindsRequestsToSubmitter: Bool { true }
    override var completesWithoutEntering: Bool { true }

    /// Read on every submission under the ring's lock, hence no dynamic exclusivity check.
    @exclusivity(unchecked) private var isSetUp = true

    override var isOpen: Bool { isSetUp }

    /// Unmaps the queues and closes the ring's descriptor.
    override func close() {
        guard isSetUp else { return }
        isSetUp = false
        io_uring_queue_exit(ring)
    }

    deinit {
        close()
        ring.deallocate()
    }

    /// Registers a provided buffer ring (`IORING_REGISTER_PBUF_RING`); 0 or a negated errno.
    func registerBufferRing(_ registration: inout io_uring_buf_reg) -> Int32 {
        io_uring_register_buf_ring(ring, &registration, 0)
    }

    /// Registers a sparse table of `count` fixed files (`IORING_REGISTER_FILES2` with
    /// `IORING_RSRC_REGISTER_SPARSE`) and unregisters it again; returns whether the kernel took
    /// it (5.19 for multishot accept into it).
    func probeSparseFileTable(count: UInt32) -> Bool {
        guard io_uring_register_files_sparse(ring, count) == 0 else { return false }
        _ = io_uring_unregister_files(ring)
        return true
    }

    /// Whether a ring with `flags` can be set up here (a throw-away ring of two entries).
    static func canSetUp(flags: UInt32) -> Bool {
        let probe = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        defer { probe.deallocate() }
        var parameters = io_uring_params()
        parameters.flags = flags
        guard io_uring_queue_init_params(2, probe, &parameters) == 0 else { return false }
        io_uring_queue_exit(probe)
        return true
    }

    /// The kernel's opcode probe: whether `opcode` is supported.
    func supports(opcode: Int32) -> Bool {
        guard let probe = io_uring_get_probe_ring(ring) else { return false }
        defer { io_uring_free_probe(probe) }
        return io_uring_opcode_supported(probe, opcode) != 0
    }

    // MARK: Submission side (caller serialises)

    /// The next free SQE, or nil when the submission queue is full. The entry is not seen by
    /// the kernel until ``flushSubmissions()``.
    @inline(__always)
    override func nextSubmissionEntry() -> UnsafeMutablePointer<io_uring_sqe>? {
        io_uring_get_sqe(ring)
    }

    /// Publishes prepared SQEs to the kernel and returns how many it has not consumed yet.
    @inline(__always)
    override func flushSubmissions() -> UInt32 {
        CLiburing_flush_sq(ring)
    }

    /// SQEs prepared but not yet published.
    override var unpublishedSubmissions: UInt32 {
        ring.pointee.sq.sqe_tail &- ring.pointee.sq.sqe_head
    }

    // MARK: Entering the kernel (may run concurrently with the rest)

    /// `io_uring_enter`: submits up to `toSubmit` published SQEs and, if `waitFor` > 0, waits
    /// until that many completions are visible or `timeout` (nanoseconds) passes.
    ///
    /// - Returns: the number of SQEs consumed, or a negated errno (`-ETIME` on timeout,
    ///   `-EINTR` when interrupted, `-EBUSY` / `-EAGAIN` when the kernel wants completions
    ///   reaped first).
    @inline(__always)
    override func enter(toSubmit: UInt32, waitFor: UInt32, timeout: UInt64?) -> Int32 {
        let flags: UInt32 = waitFor > 0 ? IORING_ENTER_GETEVENTS : 0
        let result: Int32
        if let timeout, waitFor > 0 {
            var time = __kernel_timespec(
                tv_sec: Int64(timeout / 1_000_000_000), tv_nsec: Int64(timeout % 1_000_000_000))
            result = withUnsafeMutablePointer(to: &time) { timePointer in
                // The kernel reads `arguments` and the timespec it points at during this call only.
                var arguments = io_uring_getevents_arg(
                    sigmask: 0, sigmask_sz: UInt32(_NSIG / 8), pad: 0,
                    ts: UInt64(UInt(bitPattern: timePointer)))
                // With IORING_ENTER_EXT_ARG the "sigset" argument is an io_uring_getevents_arg.
                return withUnsafeMutablePointer(to: &arguments) { argumentsPointer in
                    argumentsPointer.withMemoryRebound(to: sigset_t.self, capacity: 1) { sigsetPointer in
                        io_uring_enter2(
                            UInt32(descriptor), toSubmit, waitFor, flags | IORING_ENTER_EXT_ARG,
                            sigsetPointer, MemoryLayout<io_uring_getevents_arg>.size)
                    }
                }
            }
        } else {
            result = io_uring_enter(UInt32(descriptor), toSubmit, waitFor, flags, nil)
        }
        // liburing 2.3 issues the system call itself and returns -errno (errno is untouched).
        return result
    }

    // MARK: Completion side (caller serialises)

    /// Fills `buffer` with pointers to visible CQEs (entering the kernel first when it flags
    /// overflowed completions or pending task work) and returns how many. The CQEs stay valid
    /// until ``advanceCompletions(by:)``.
    @inline(__always)
    override func peekCompletions(into buffer: UnsafeMutableBufferPointer<UnsafeMutablePointer<io_uring_cqe>?>) -> Int {
        Int(io_uring_peek_batch_cqe(ring, buffer.baseAddress, UInt32(buffer.count)))
    }

    /// Marks `count` CQEs as consumed, returning their slots to the kernel.
    @inline(__always)
    override func advanceCompletions(by count: Int) {
        io_uring_cq_advance(ring, UInt32(count))
    }

    /// Completions the kernel had to drop because its overflow list could not grow.
    override var droppedCompletions: UInt32 {
        CLiburing_cq_overflow_count(ring)
    }
}
