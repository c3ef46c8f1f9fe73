import CLiburing
import Glibc

/// Posting asynchronous operations.
///
/// Every method here returns as soon as the operation is queued for the kernel; its result
/// arrives later as a ``Completion`` carrying the same handle and context. The context belongs
/// to the port from the call until that completion is dequeued (see ``IOContext``).
///
/// Each method throws ``RingPortError`` without queuing anything when the handle is closed
/// (``RingPortError/Code/handleClosed``), the context is already in flight
/// (``RingPortError/Code/contextInFlight``), a range does not fit the buffer
/// (``RingPortError/Code/invalidArgument``), the port is closed (``RingPortError/Code/portClosed``),
/// or the submission queue is full and cannot be submitted (``RingPortError/Code/submissionFailed``).
///
/// All methods are thread-safe.
extension CompletionPort {
    /// Posts a receive into `context`'s buffer (`OP_READ`). The completion's
    /// ``Completion/bytesTransferred`` says how many bytes arrived; 0 means the peer closed.
    ///
    /// - Parameters:
    ///   - handle: the socket's handle.
    ///   - context: the context whose buffer receives the bytes; the port owns it until the
    ///     completion is dequeued.
    ///   - range: where in the buffer to receive; the whole buffer by default.
    public func read(_ handle: IOHandle, into context: IOContext, range: Range<Int>? = nil) throws(RingPortError) {
        let range = range ?? 0..<context.capacity
        try validate(range, in: context, operation: .read)
        let descriptor = handle.descriptor
        let buffer = context.bytes + range.lowerBound
        try post(onRing: handle.id.ring, .read, handle: handle, context: context) { entry in
            io_uring_prep_recv(entry, descriptor, buffer, range.count, 0)
        }
    }

    /// Posts a send of the bytes in `range` of `context`'s buffer (`OP_WRITE`). The kernel may
    /// send fewer bytes than asked (``Completion/bytesTransferred``); post the rest again.
    /// `SIGPIPE` is never raised (`MSG_NOSIGNAL`); a vanished peer completes with `EPIPE` or
    /// `ECONNRESET`.
    ///
    /// Keep one send in flight per stream socket, as the server and async layers do: the rest of
    /// a short send must go before the next bytes, and io_uring does not order two sends that
    /// both wait for room in the socket (the later one can go first).
    public func write(_ handle: IOHandle, from context: IOContext, range: Range<Int>) throws(RingPortError) {
        try validate(range, in: context, operation: .write)
        let descriptor = handle.descriptor
        let buffer = context.bytes + range.lowerBound
        try post(onRing: handle.id.ring, .write, handle: handle, context: context) { entry in
            io_uring_prep_send(entry, descriptor, buffer, range.count, Int32(MSG_NOSIGNAL))
        }
    }

    /// Posts a send of the bytes in `range` of a provided buffer received earlier (e.g. to echo
    /// them without a copy). `context` carries the operation (its own buffer is not used). The
    /// application keeps owning the buffer: release it after this write completes, not before.
    public func write(
        _ handle: IOHandle, from buffer: ReceivedBuffer, range: Range<Int>, context: IOContext
    ) throws(RingPortError) {
        guard range.lowerBound >= 0, range.upperBound <= buffer.count else {
            throw RingPortError(
                .invalidArgument, operation: "write range \(range) of a \(buffer.count)-byte received buffer")
        }
        let descriptor = handle.descriptor
        let bytes = buffer.withUnsafeBytes { $0.baseAddress! } + range.lowerBound
        try post(onRing: handle.id.ring, .write, handle: handle, context: context) { entry in
            // The provided buffer's memory belongs to the ring and stays mapped while the port lives.
            io_uring_prep_send(entry, descriptor, bytes, range.count, Int32(MSG_NOSIGNAL))
        }
    }

    /// Posts a send of `bytes`, memory the application owns (e.g. a byte buffer's storage)
    /// instead of a context's buffer, like `WSASend` with the caller's `WSABUF`. `context`
    /// carries the operation (its own buffer is not used). The memory must stay valid and
    /// unchanged until the completion is dequeued: keep its owner alive meanwhile, for example in
    /// the context's ``IOContext/attachment``. Short sends as for ``write(_:from:range:)``.
    public func write(_ handle: IOHandle, from bytes: UnsafeRawBufferPointer, context: IOContext) throws(RingPortError)
    {
        guard let start = bytes.baseAddress, bytes.count <= Int(UInt32.max) else {
            throw RingPortError(.invalidArgument, operation: "write of \(bytes.count) bytes from no memory")
        }
        let descriptor = handle.descriptor
        try post(onRing: handle.id.ring, .write, handle: handle, context: context) { entry in
            io_uring_prep_send(entry, descriptor, start, bytes.count, Int32(MSG_NOSIGNAL))
        }
    }

    /// The most buffers one ``write(_:gathering:context:)`` with `context` sends: its buffer
    /// holds the I/O vector, one `iovec` per buffer.
    public static func gatheringCapacity(of context: IOContext) -> Int {
        context.capacity / MemoryLayout<iovec>.stride
    }

    /// Posts one send of several buffers of the application's memory, in order (`sendmsg` with
    /// one I/O vector entry per buffer, like `WSASend` with an array of `WSABUF`s): queued
    /// writes leave in one system call. The vector is written into `context`'s buffer (at most
    /// ``gatheringCapacity(of:)`` entries) and the message header into its scratch memory; the
    /// memory the buffers point to must stay valid and unchanged until the completion is
    /// dequeued, as for ``write(_:from:context:)``. The kernel may send fewer bytes than the
    /// buffers hold (``Completion/bytesTransferred``): a prefix of them, in order.
    public func write(
        _ handle: IOHandle, gathering buffers: some Collection<UnsafeRawBufferPointer>, context: IOContext
    ) throws(RingPortError) {
        let count = buffers.count
        guard count >= 1, count <= CompletionPort.gatheringCapacity(of: context) else {
            throw RingPortError(
                .invalidArgument,
                operation: """
                    gathered write of \(count) buffers with a context for \
                    \(CompletionPort.gatheringCapacity(of: context))
                    """)
        }
        let descriptor = handle.descriptor
        try post(onRing: handle.id.ring, .write, handle: handle, context: context) { entry in
            // The post owns the context: the vector goes into its buffer and the header into
            // its scratch memory, both kept alive with the context until the completion.
            let vector = context.bytes.bindMemory(to: iovec.self, capacity: count)
            // Contiguous buffers (an array) are read without generic iteration: callers in other
            // modules get this function unspecialised.
            let filled = buffers.withContiguousStorageIfAvailable { contiguous -> Bool in
                for index in contiguous.indices { vector[index] = iovec(contiguous[index]) }
                return true
            }
            if filled == nil {
                var index = 0
                for buffer in buffers {
                    vector[index] = iovec(buffer)
                    index += 1
                }
            }
            let message = context.messageScratch
            message.pointee.header = msghdr(
                msg_name: nil, msg_namelen: 0, msg_iov: vector, msg_iovlen: count,
                msg_control: nil, msg_controllen: 0, msg_flags: 0)
            io_uring_prep_sendmsg(entry, descriptor, message.pointer(to: \.header)!, UInt32(MSG_NOSIGNAL))
        }
    }

    /// Posts an accept on a listening socket (`OP_ACCEPT`, like `AcceptEx`). The completion's
    /// ``Completion/acceptedDescriptor`` is the new connection (close-on-exec), owned by the
    /// application; ``IOContext/acceptedPeerAddress`` is the peer's address.
    public func accept(on listener: IOHandle, context: IOContext) throws(RingPortError) {
        let descriptor = listener.descriptor
        let address = context.scratchAddress
        let addressLength = context.scratchAddressLength
        try post(onRing: listener.id.ring, .accept, handle: listener, context: context) { entry in
            // The kernel writes the peer address into the context's scratch memory, which the
            // context (held by the in-flight table) keeps alive until the completion. An accept
            // that fails writes nothing: no family, so no earlier peer's address is read back.
            address.pointee.ss_family = sa_family_t(AF_UNSPEC)
            addressLength.pointee = socklen_t(MemoryLayout<sockaddr_storage>.size)
            address.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                io_uring_prep_accept(entry, descriptor, socketAddress, addressLength, Int32(SOCK_CLOEXEC.rawValue))
            }
        }
    }

    /// Posts a multishot accept on a listening socket (Linux 5.19+): one operation that completes
    /// once per accepted connection (``Completion/hasMore`` set) until it ends — cancelled, or an
    /// error such as `EMFILE` — with a completion whose ``Completion/hasMore`` is false. Then post
    /// it again. The context stays with the port until that last completion; no peer address is
    /// reported (use `getpeername`).
    public func acceptMultishot(on listener: IOHandle, context: IOContext) throws(RingPortError) {
        let descriptor = listener.descriptor
        // No address is reported: none is left from an earlier accept on the context either.
        let addressLength = context.scratchAddressLength
        try post(onRing: listener.id.ring, .accept, handle: listener, context: context) { entry in
            addressLength.pointee = 0
            io_uring_prep_multishot_accept(entry, descriptor, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
        }
    }

    /// Posts a multishot receive (Linux 6.0+) into the port's provided buffers
    /// (``Configuration/providedBuffers``): one operation that completes every time bytes arrive,
    /// each completion carrying a ``Completion/receivedBuffer`` the application must release.
    /// It ends with a completion whose ``Completion/hasMore`` is false: 0 bytes when the peer
    /// closed, `ENOBUFS` when the ring had no free buffer (post again once buffers come back), an
    /// error, or `ECANCELED`. An idle connection holds no buffer.
    ///
    /// - Parameters:
    ///   - handle: the socket's handle.
    ///   - context: carries the operation (its own buffer is not used); the port owns it until
    ///     the last completion.
    ///   - limit: where the kernel supports it (``IOURingFeatures/multishotReceiveLimit``), the
    ///     receive also ends, with a completion whose ``Completion/hasMore`` is false, once it
    ///     delivered `limit` bytes in all (the completion that reaches the limit may deliver a
    ///     buffer's worth past it). Ignored elsewhere; nil (the default): no limit.
    /// - Throws: ``RingPortError/Code/unsupported`` when the port has no provided buffers.
    public func receiveMultishot(_ handle: IOHandle, context: IOContext, limit: Int? = nil) throws(RingPortError) {
        guard let group = providedBufferGroups[handle.id.ring] else {
            throw RingPortError(.unsupported, operation: "multishot receive without provided buffers")
        }
        let descriptor = handle.descriptor
        let limit = limit.flatMap { honoursMultishotReceiveLimit ? UInt32(clamping: max($0, 1)) : nil }
        try post(onRing: handle.id.ring, .read, handle: handle, context: context) { entry in
            io_uring_prep_recv_multishot(entry, descriptor, nil, 0, 0)
            entry.pointee.flags |= CLiburing_IOSQE_BUFFER_SELECT
            entry.pointee.buf_group = group
            if let limit { CLiburing_setMultishotReceiveLimit(entry, limit) }
        }
    }

    /// Posts one receive into the port's provided buffers (``Configuration/providedBuffers``,
    /// Linux 5.19+): like ``read(_:into:range:)``, but the kernel picks a buffer only once bytes
    /// arrive, so a waiting receive holds none. Its completion carries the bytes in a
    /// ``Completion/receivedBuffer`` the application must release; 0 bytes when the peer closed,
    /// `ENOBUFS` when the ring had no free buffer (post again once buffers come back).
    ///
    /// - Throws: ``RingPortError/Code/unsupported`` when the port has no provided buffers.
    public func receive(_ handle: IOHandle, context: IOContext) throws(RingPortError) {
        guard let group = providedBufferGroups[handle.id.ring] else {
            throw RingPortError(.unsupported, operation: "receive into a provided buffer without provided buffers")
        }
        let descriptor = handle.descriptor
        try post(onRing: handle.id.ring, .read, handle: handle, context: context) { entry in
            io_uring_prep_recv(entry, descriptor, nil, 0, 0)
            entry.pointee.flags |= CLiburing_IOSQE_BUFFER_SELECT
            entry.pointee.buf_group = group
        }
    }

    /// Posts a zero-copy send (Linux 6.0+) of the bytes in `range` of `context`'s buffer: the
    /// kernel transmits from the buffer itself instead of copying it. One completion arrives,
    /// after the kernel has let go of the buffer, with the bytes sent. Worth it for large
    /// payloads (tens of KiB); on loopback the kernel copies anyway.
    public func writeZeroCopy(_ handle: IOHandle, from context: IOContext, range: Range<Int>) throws(RingPortError) {
        try validate(range, in: context, operation: .write)
        let descriptor = handle.descriptor
        let buffer = context.bytes + range.lowerBound
        try post(onRing: handle.id.ring, .write, handle: handle, context: context, isZeroCopy: true) { entry in
            io_uring_prep_send_zc(entry, descriptor, buffer, range.count, Int32(MSG_NOSIGNAL), 0)
        }
    }

    /// Posts a connect of the handle's socket to `address`.
    public func connect(_ handle: IOHandle, to address: SocketAddress, context: IOContext) throws(RingPortError) {
        let descriptor = handle.descriptor
        let storage = context.scratchAddress
        try post(onRing: handle.id.ring, .connect, handle: handle, context: context) { entry in
            // The address lives in the context's scratch memory until the completion.
            let length = address.write(to: &storage.pointee)
            storage.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                io_uring_prep_connect(entry, descriptor, socketAddress, length)
            }
        }
    }

    /// Posts a timer that completes after `duration` (``IOOperation/timeout``; ``Completion/error``
    /// is nil when it expired, `ECANCELED` when it was cancelled with ``cancel(_:)``).
    ///
    /// - Parameters:
    ///   - duration: how long from now (a negative duration counts as zero).
    ///   - context: the context that carries the timer (its scratch memory holds the timespec);
    ///     the port owns it until the completion is dequeued. Cancel the timer with it.
    ///   - handle: a handle to deliver the completion with (and to serialise it with that
    ///     handle's other completions), or nil.
    public func timeout(after duration: Duration, context: IOContext, handle: IOHandle? = nil) throws(RingPortError) {
        // An absolute deadline on CLOCK_MONOTONIC (the kernel's default clock for
        // IORING_TIMEOUT_ABS): the same SQE submitted again after a leader change keeps it.
        let deadline = MonotonicInstant.now.advanced(by: duration).nanoseconds
        let timespec = context.scratchTimeout
        try post(onRing: handle?.id.ring ?? nextRingIndex(), .timeout, handle: handle, context: context) { entry in
            // The kernel reads the timespec from the context's scratch memory.
            timespec.pointee = __kernel_timespec(
                tv_sec: Int64(deadline / 1_000_000_000), tv_nsec: Int64(deadline % 1_000_000_000))
            io_uring_prep_timeout(entry, timespec, 0, IORING_TIMEOUT_ABS)
        }
    }

    /// Posts a no-op that completes after one trip through the kernel (``IOOperation/nop``).
    public func nop(context: IOContext? = nil, handle: IOHandle? = nil, value: UInt64 = 0) throws(RingPortError) {
        try post(onRing: handle?.id.ring ?? nextRingIndex(), .nop, handle: handle, context: context, userValue: value) {
            entry in
            io_uring_prep_nop(entry)
        }
    }

    /// Posts a completion of the application's own, like `PostQueuedCompletionStatus`: it is
    /// dequeued like any other, with operation ``IOOperation/user``, the given bytes as its
    /// ``Completion/result``, and the given handle, context and value. Use it to wake workers,
    /// hand work to them, or tell them to stop.
    ///
    /// - Parameters:
    ///   - bytesTransferred: the completion's ``Completion/result`` (and
    ///     ``Completion/bytesTransferred`` when positive).
    ///   - handle: when given, the completion is serialised with that handle's others.
    ///   - context: a context to carry with the completion, or nil; the port owns it until the
    ///     completion is dequeued.
    ///   - value: the completion's ``Completion/userValue``.
    public func post(
        bytesTransferred: Int32 = 0, handle: IOHandle? = nil, context: IOContext? = nil, value: UInt64 = 0
    ) throws(RingPortError) {
        try post(
            onRing: handle?.id.ring ?? nextRingIndex(),
            .user, handle: handle, context: context, postedResult: bytesTransferred, userValue: value
        ) { entry in
            io_uring_prep_nop(entry)
        }
    }

    /// Asks the kernel to cancel the operation `context` was posted with, like `CancelIoEx`.
    ///
    /// The operation's completion is still delivered: with `ECANCELED` if the cancellation won,
    /// with its real result if the operation finished first. Until then the context and its
    /// buffer stay owned by the port and valid.
    ///
    /// - Returns: whether the operation was still with the kernel (false: it already completed,
    ///   or the context is not in flight).
    ///
    /// - Throws: ``RingPortError`` when the cancellation cannot be queued (the ring failed).
    @discardableResult
    public func cancel(_ context: IOContext) throws(RingPortError) -> Bool {
        guard let index = context.kernelRing else { return false }
        let ring = rings[index]
        return try ring.lock.withLock { () throws(RingPortError) -> Bool in
            guard context.kernelRing == index else { return false }
            try ring.cancelLocked(userData: context.userData)
            return true
        }
    }

    /// Cancels every operation in flight on `handle` and returns how many there were. Their
    /// completions are delivered as described in ``cancel(_:)``.
    ///
    /// - Throws: ``RingPortError`` when the cancellations cannot be queued (the ring failed).
    @discardableResult
    public func cancelAll(on handle: IOHandle) throws(RingPortError) -> Int {
        let ring = rings[handle.id.ring]
        return try ring.lock.withLock { () throws(RingPortError) -> Int in
            try ring.cancelOperationsLocked(of: handle)
        }
    }

    // MARK: Helpers

    /// Throws ``RingPortError/Code/invalidArgument`` unless `range` lies within `context`'s buffer.
    func validate(_ range: Range<Int>, in context: IOContext, operation: IOOperation) throws(RingPortError) {
        guard range.lowerBound >= 0, range.upperBound <= context.capacity, range.count <= Int(UInt32.max) else {
            throw RingPortError(
                .invalidArgument,
                operation: "\(operation) range \(range) in a buffer of \(context.capacity) bytes")
        }
    }
}

extension iovec {
    /// The I/O vector entry of `buffer` (the kernel only reads through it for a send).
    @inline(__always)
    init(_ buffer: UnsafeRawBufferPointer) {
        self.init(iov_base: UnsafeMutableRawPointer(mutating: buffer.baseAddress), iov_len: buffer.count)
    }
}
