import CLiburing
import Glibc

/// Datagrams: receiving with the sender's address and sending to an address, like `WSARecvFrom`
/// and `WSASendTo` on a completion port.
///
/// Use them on a datagram socket (e.g. from ``UDPSocket/makeBound(to:options:)``) associated
/// with the port. Posting, ownership and errors follow the rules of the other operations (see
/// ``read(_:into:range:)``): each method returns once the operation is queued; the context,
/// its buffer and its scratch memory belong to the port from the call until the operation's
/// completion is dequeued, and must not be touched meanwhile. The message header, the I/O
/// vector and the peer address the kernel uses live in the context's scratch memory, allocated
/// the first time the context carries a datagram operation and kept (and reused) for the
/// context's life; contexts that never carry one pay nothing for it.
///
/// All methods are thread-safe.
extension CompletionPort {
    /// Posts a receive of one datagram into `range` of `context`'s buffer (``IOOperation/receiveMessage``;
    /// io_uring `RECVMSG`).
    ///
    /// The completion's ``Completion/bytesTransferred`` is the datagram's length — 0 is a valid,
    /// empty datagram, not an end of stream. Once the completion is dequeued,
    /// ``IOContext/messageSenderAddress`` says who sent it and ``IOContext/isMessageTruncated``
    /// whether it was longer than `range` (the rest of it is then lost). A connected socket (see
    /// ``UDPSocket/connect(_:to:)``) may complete with an error the network reported for an
    /// earlier send, e.g. `ECONNREFUSED`.
    ///
    /// - Parameters:
    ///   - handle: the datagram socket's handle.
    ///   - context: the context whose buffer receives the datagram and whose scratch memory
    ///     holds the message header; the port owns it until the completion is dequeued.
    ///   - range: where in the buffer to receive; the whole buffer by default.
    /// - Throws: as the other posting methods (handle or port closed, context in flight, range
    ///   outside the buffer, submission failed); nothing is queued then.
    public func receiveMessage(
        _ handle: IOHandle, into context: IOContext, range: Range<Int>? = nil
    ) throws(RingPortError) {
        let range = range ?? 0..<context.capacity
        try validate(range, in: context, operation: .receiveMessage)
        let descriptor = handle.descriptor
        try post(onRing: handle.id.ring, .receiveMessage, handle: handle, context: context) { entry in
            // The post owns the context here, so its scratch may be allocated or grown. The
            // header, vector and address live in the context's scratch memory and the bytes in
            // its buffer; the in-flight table holds the context, so the kernel may read the
            // header and write the address, the flags and the bytes until the completion.
            let message = context.messageScratch
            message.pointee.base.address.ss_family = sa_family_t(AF_UNSPEC)  // no stale sender after a failure
            message.pointee.vector = iovec(iov_base: context.bytes + range.lowerBound, iov_len: range.count)
            message.pointee.header = msghdr(
                msg_name: UnsafeMutableRawPointer(message.pointer(to: \.base.address)!),
                msg_namelen: socklen_t(MemoryLayout<sockaddr_storage>.size),
                msg_iov: message.pointer(to: \.vector)!, msg_iovlen: 1,
                msg_control: nil, msg_controllen: 0, msg_flags: 0)
            io_uring_prep_recvmsg(entry, descriptor, message.pointer(to: \.header)!, 0)
        }
    }

    /// Posts a send of the bytes in `range` of `context`'s buffer as one datagram to `address`
    /// (``IOOperation/sendMessage``; io_uring `SENDMSG` with `MSG_NOSIGNAL`).
    ///
    /// The completion's ``Completion/bytesTransferred`` is the datagram's length: a datagram is
    /// sent whole or not at all (`EMSGSIZE` when it is too long for the socket). Being sent
    /// says nothing about its arrival.
    ///
    /// - Parameters:
    ///   - handle: the datagram socket's handle.
    ///   - context: the context whose buffer holds the datagram; the port owns it until the
    ///     completion is dequeued.
    ///   - range: the datagram's bytes; may be empty.
    ///   - address: where to send it; nil sends to the peer of a connected socket (see
    ///     ``UDPSocket/connect(_:to:)``). Copied into the context's scratch memory.
    /// - Throws: as ``receiveMessage(_:into:range:)``.
    public func sendMessage(
        _ handle: IOHandle, from context: IOContext, range: Range<Int>, to address: SocketAddress?
    ) throws(RingPortError) {
        try validate(range, in: context, operation: .sendMessage)
        let descriptor = handle.descriptor
        try post(onRing: handle.id.ring, .sendMessage, handle: handle, context: context) { entry in
            // As for a receive: the post owns the context; the header, vector and address stay
            // in its scratch memory, and the bytes in its buffer, until the completion.
            let message = context.messageScratch
            var name: UnsafeMutableRawPointer?
            var nameLength = socklen_t(0)
            if let address {
                nameLength = address.write(to: &message.pointee.base.address)
                name = UnsafeMutableRawPointer(message.pointer(to: \.base.address)!)
            }
            message.pointee.vector = iovec(iov_base: context.bytes + range.lowerBound, iov_len: range.count)
            message.pointee.header = msghdr(
                msg_name: name, msg_namelen: nameLength,
                msg_iov: message.pointer(to: \.vector)!, msg_iovlen: 1,
                msg_control: nil, msg_controllen: 0, msg_flags: 0)
            io_uring_prep_sendmsg(entry, descriptor, message.pointer(to: \.header)!, UInt32(MSG_NOSIGNAL))
        }
    }
}
