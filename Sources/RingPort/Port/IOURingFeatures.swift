import CLiburing
import Glibc

/// What the running kernel's io_uring offers of what RingPort uses, found by trying it.
///
/// ``probe()`` sets up a small ring of its own and exercises each feature on loopback sockets
/// (a listener on 127.0.0.1 with an ephemeral port, a socket pair): an opcode the probe table
/// lists may still reject a flag, so flags are tested by use, not by version number.
///
/// A value type, safe to pass between threads.
public struct IOURingFeatures: Hashable, Sendable, CustomStringConvertible {
    /// The kernel release (`uname -r`).
    public var kernelRelease: String
    /// `IORING_SETUP_SUBMIT_ALL` (5.18): a bad SQE does not stop the rest of a batch.
    public var submitAll = false
    /// `IORING_SETUP_COOP_TASKRUN` with `TASKRUN_FLAG` (5.19): no interrupt to run task work.
    public var cooperativeTaskRun = false
    /// Multishot accept (5.19): one SQE accepts every connection.
    public var multishotAccept = false
    /// Provided buffer rings (5.19): `IORING_REGISTER_PBUF_RING`.
    public var providedBufferRings = false
    /// Multishot receive into provided buffers (6.0).
    public var multishotReceive = false
    /// A total byte limit for one multishot receive (`sqe->optlen`, 6.17): the receive ends by
    /// itself, with the completion that reaches the limit (which may deliver a buffer's worth
    /// past it), so a reader that stops can stop it without a cancellation racing the kernel.
    public var multishotReceiveLimit = false
    /// Zero-copy send, `IORING_OP_SEND_ZC` (6.0).
    public var zeroCopySend = false
    /// NOPs that complete with a result given in the SQE (`IORING_NOP_INJECT_RESULT`), which
    /// ``FaultInjection`` uses.
    public var nopResultInjection = false
    /// `IORING_SETUP_SINGLE_ISSUER` with `DEFER_TASKRUN` (6.1): completion work runs only when the
    /// one submitting thread asks for completions. Not used: RingPort's rings are led by
    /// whichever of their workers is not stuck in a handler (see `docs/ARCHITECTURE.md`).
    public var singleIssuerDeferredTaskRun = false
    /// A sparse registered file table (5.19 with multishot accept into it): direct descriptors,
    /// no file lookup per request. Not used: no gain measured (see `docs/ARCHITECTURE.md`).
    public var registeredFileTable = false
    /// Receive bundles, `IORING_RECVSEND_BUNDLE` (6.10): one receive completion fills several
    /// provided buffers. Not used: a message smaller than a buffer fills one either way.
    public var receiveBundles = false
    /// Incremental consumption of provided buffers, `IOU_PBUF_RING_INC` (6.12): several receives
    /// share one buffer. Not used (see `docs/ARCHITECTURE.md`).
    public var incrementalBufferConsumption = false

    /// What a port on the epoll backend offers: none of io_uring's optional features, so that
    /// callers take the paths they have for older kernels (an accept pool, plain receives into
    /// their own buffers, plain sends).
    public static var epollBackend: IOURingFeatures {
        IOURingFeatures(kernelRelease: kernelRelease())
    }

    /// ``probe()``, made once per process (nil if it failed): the kernel does not change.
    static let probedOnce: IOURingFeatures? = try? probe()

    /// Probes the kernel. Takes a few milliseconds.
    ///
    /// - Throws: ``RingPortError`` when io_uring cannot be set up at all (with the cause and the
    ///   fix). A feature whose test cannot run (no loopback interface, no descriptor left) is
    ///   reported as absent, so that the caller falls back instead of failing.
    public static func probe() throws(RingPortError) -> IOURingFeatures {
        var features = IOURingFeatures(kernelRelease: kernelRelease())
        let ring = try IOURing(entries: 8, completionEntries: 16)
        // First, while nothing else is in flight on the ring.
        features.nopResultInjection = FaultInjection.kernelInjectsNOPResults(on: ring)
        features.submitAll = ring.setupFlags & IORING_SETUP_SUBMIT_ALL != 0
        features.cooperativeTaskRun = ring.setupFlags & IORING_SETUP_COOP_TASKRUN != 0
        features.zeroCopySend = ring.supports(opcode: Int32(IORING_OP_SEND_ZC.rawValue))
        features.multishotAccept = (try? probeMultishotAccept(ring)) ?? false
        let buffers = try? ProvidedBufferRing(ring: ring, groupID: 1, count: 2, bufferSize: 64)
        if let buffers {
            features.providedBufferRings = true
            features.multishotReceive = (try? probeMultishotReceive(ring, buffers: buffers)) ?? false
        }
        // Buffers of its own, so that the receive it probes cannot end for want of one.
        let limitBuffers = try? ProvidedBufferRing(ring: ring, groupID: 3, count: 4, bufferSize: 64)
        if features.multishotReceive, let limitBuffers {
            features.multishotReceiveLimit = (try? probeMultishotReceiveLimit(ring, buffers: limitBuffers)) ?? false
        }
        let incremental = try? ProvidedBufferRing(
            ring: ring, groupID: 2, count: 2, bufferSize: 64, registrationFlags: CLiburing_IOU_PBUF_RING_INC)
        features.incrementalBufferConsumption = incremental != nil
        features.receiveBundles = ring.features & CLiburing_IORING_FEAT_RECVSEND_BUNDLE != 0
        features.registeredFileTable = ring.probeSparseFileTable(count: 16)
        features.singleIssuerDeferredTaskRun = IOURing.canSetUp(
            flags: IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN)
        // The buffers outlive the ring that uses them.
        ring.close()
        withExtendedLifetime((buffers, incremental, limitBuffers)) {}
        return features
    }

    /// A report for people: each feature, and what RingPort does without it.
    public var description: String {
        func line(_ present: Bool, _ name: String, _ fallback: String) -> String {
            present ? "  yes  \(name)" : "  no   \(name) -> \(fallback)"
        }
        func unused(_ present: Bool, _ name: String, _ why: String) -> String {
            "  \(present ? "yes" : "no ")  \(name): not used, \(why)"
        }
        return [
            "io_uring features of Linux \(kernelRelease):",
            line(true, "io_uring with NODROP and EXT_ARG (5.11)", ""),
            line(submitAll, "SUBMIT_ALL (5.18)", "a bad SQE ends its batch; the rest is submitted again"),
            line(cooperativeTaskRun, "COOP_TASKRUN + TASKRUN_FLAG (5.19)", "task work interrupts the leader"),
            line(multishotAccept, "multishot accept (5.19)", "a pool of pre-posted single accepts"),
            line(providedBufferRings, "provided buffer rings (5.19)", "one receive buffer per connection"),
            line(multishotReceive, "multishot receive (6.0)", "one receive per message into a per-connection buffer"),
            line(
                multishotReceiveLimit, "multishot receive byte limit (6.17)",
                "a reader that stops cancels its receive, which may deliver more first"),
            line(zeroCopySend, "zero-copy send (6.0)", "plain send for every size"),
            line(
                nopResultInjection, "NOP result injection (tests)", "fault injection substitutes results when reaping"),
            unused(
                singleIssuerDeferredTaskRun, "SINGLE_ISSUER + DEFER_TASKRUN (6.1)",
                "a ring is led by whichever worker is not stuck in a handler"),
            unused(
                registeredFileTable, "registered file table (5.19)",
                "no gain measured in the C reference at 1,000 connections (ARCHITECTURE)"),
            unused(receiveBundles, "receive bundles (6.10)", "a message smaller than a buffer fills one either way"),
            unused(
                incrementalBufferConsumption, "incremental buffer consumption (6.12)",
                "buffers shared by connections need reference counts (ARCHITECTURE)"),
        ].joined(separator: "\n")
    }

    // MARK: Probes

    private static func kernelRelease() -> String {
        var names = utsname()
        uname(&names)
        return withUnsafeBytes(of: names.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// Posts a multishot accept on a loopback listener, connects to it, and looks at the result:
    /// `EINVAL` means the flag is unknown.
    private static func probeMultishotAccept(_ ring: IOURing) throws(RingPortError) -> Bool {
        let listener = try TCPSocket.makeListener(address: SocketAddress(host: "127.0.0.1", port: 0))
        defer { SystemCall.close(listener) }
        let address = try TCPSocket.localAddress(of: listener)
        try submit(ring) { entry in
            io_uring_prep_multishot_accept(entry, listener, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
            io_uring_sqe_set_data64(entry, 1)
        }
        let client = try TCPSocket.connect(to: address)
        defer { SystemCall.close(client) }
        // Only the accept's completion carries a descriptor to close: a result of another is
        // no number of ours.
        let first = waitForCompletion(ring).flatMap { $0.user_data == 1 ? $0 : nil }
        if let first, first.res >= 0 { SystemCall.close(first.res) }
        let supported = first.map { $0.res >= 0 && $0.flags & IORING_CQE_F_MORE != 0 } ?? false
        if supported { try cancelAndDrain(ring, userData: 1) }
        return supported
    }

    /// Posts a multishot receive with buffer selection on a socket pair holding one byte.
    private static func probeMultishotReceive(
        _ ring: IOURing, buffers: ProvidedBufferRing
    ) throws(RingPortError) -> Bool {
        let first = try firstMultishotReceive(ring, buffers: buffers, holding: [1], limit: nil, userData: 2)
        return first.map {
            $0.res == 1 && $0.flags & IORING_CQE_F_MORE != 0 && $0.flags & IORING_CQE_F_BUFFER != 0
        } ?? false
    }

    /// Posts a multishot receive limited to 2 bytes on a socket pair holding 4, with buffers to
    /// spare: a kernel that knows the limit ends the receive with the completion that reached it
    /// (the 4 bytes, no `F_MORE`); one that does not rejects the field (`EINVAL`) or ignores it
    /// (4 bytes, more to come).
    private static func probeMultishotReceiveLimit(
        _ ring: IOURing, buffers: ProvidedBufferRing
    ) throws(RingPortError) -> Bool {
        let first = try firstMultishotReceive(ring, buffers: buffers, holding: [1, 2, 3, 4], limit: 2, userData: 3)
        return first.map { $0.res == 4 && $0.flags & IORING_CQE_F_MORE == 0 } ?? false
    }

    /// The first completion of a multishot receive (buffer selection from `buffers`, at most
    /// `limit` bytes in all if given) posted on one end of a new socket pair whose other end has
    /// sent `bytes`; the receive is cancelled and drained if it goes on. The ring is closed after
    /// the probes: the buffer it filled need not go back.
    private static func firstMultishotReceive(
        _ ring: IOURing, buffers: ProvidedBufferRing, holding bytes: [UInt8], limit: UInt32?, userData: UInt64
    ) throws(RingPortError) -> io_uring_cqe? {
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw RingPortError(.systemCallFailed, operation: "socketpair", errno: .init(rawValue: errno))
        }
        defer { SystemCall.close(pair[0]); SystemCall.close(pair[1]) }
        _ = bytes.withUnsafeBytes { write(pair[1], $0.baseAddress, $0.count) }
        let group = buffers.groupID
        try submit(ring) { entry in
            io_uring_prep_recv_multishot(entry, pair[0], nil, 0, 0)
            entry.pointee.flags |= CLiburing_IOSQE_BUFFER_SELECT
            entry.pointee.buf_group = group
            if let limit { CLiburing_setMultishotReceiveLimit(entry, limit) }
            io_uring_sqe_set_data64(entry, userData)
        }
        let first = waitForCompletion(ring)
        if let first, first.flags & IORING_CQE_F_MORE != 0 { try cancelAndDrain(ring, userData: userData) }
        return first
    }

    private static func submit(
        _ ring: IOURing, _ fill: (UnsafeMutablePointer<io_uring_sqe>) -> Void
    ) throws(RingPortError) {
        guard let entry = ring.nextSubmissionEntry() else {
            throw RingPortError(.submissionFailed, operation: "io_uring feature probe: submission queue full")
        }
        fill(entry)
        let result = ring.enter(toSubmit: ring.flushSubmissions(), waitFor: 0, timeout: nil)
        if result < 0 {
            throw RingPortError(.submissionFailed, operation: "io_uring feature probe", errno: .init(rawValue: -result))
        }
    }

    /// Waits up to a second for one completion and consumes it.
    private static func waitForCompletion(_ ring: IOURing) -> io_uring_cqe? {
        _ = ring.enter(toSubmit: 0, waitFor: 1, timeout: 1_000_000_000)
        return withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<io_uring_cqe>?.self, capacity: 1) { batch in
            guard ring.peekCompletions(into: batch) == 1 else { return nil }
            let entry = batch[0].unsafelyUnwrapped.pointee
            ring.advanceCompletions(by: 1)
            return entry
        }
    }

    /// Cancels the multishot operation with `userData` and consumes completions until it ends.
    private static func cancelAndDrain(_ ring: IOURing, userData: UInt64) throws(RingPortError) {
        try submit(ring) { entry in
            io_uring_prep_cancel64(entry, userData, 0)
            io_uring_sqe_set_data64(entry, 99)
        }
        for _ in 0..<8 {
            guard let entry = waitForCompletion(ring) else { return }
            if entry.user_data == userData && entry.flags & IORING_CQE_F_MORE == 0 { return }
        }
    }
}
