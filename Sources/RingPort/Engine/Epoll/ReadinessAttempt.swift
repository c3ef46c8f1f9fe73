import CLiburing
import Glibc

/// One non-blocking try of a readiness operation of an ``EpollRing``: the system call an SQE
/// stands for, with the SQE's own arguments.
///
/// Every call's result becomes the operation's completion, as the kernel's would: a byte count,
/// a descriptor, 0, or a negated errno. `EINTR` is retried; `EAGAIN` means "wait for readiness".
enum ReadinessAttempt {
    /// Done, with the completion's result; `drained` when a stream socket's receive returned
    /// less than asked for (nothing more to read until the next readiness event).
    case completed(Int32, drained: Bool)
    /// Would block: wait for the next readiness event.
    case wouldBlock
    /// A connect is under way: wait for writability, then read its outcome.
    case connecting

    /// Tries `entry` once on its descriptor, of `kind`. `isConnecting`: a connect started earlier.
    static func perform(_ entry: io_uring_sqe, kind: DescriptorTable.Kind, isConnecting: Bool) -> ReadinessAttempt {
        let descriptor = entry.fd
        let buffer = UnsafeMutableRawPointer(bitPattern: UInt(entry.addr))
        let count = Int(entry.len)
        while true {
            let result: Int
            switch UInt32(entry.opcode) {
            case IORING_OP_RECV.rawValue:
                result = recv(descriptor, buffer, count, Int32(bitPattern: entry.msg_flags) | Int32(MSG_DONTWAIT))
                if result >= 0 {
                    let drained = kind == .streamSocket && entry.msg_flags == 0 && result > 0 && result < count
                    return .completed(Int32(clamping: result), drained: drained)
                }
            case IORING_OP_SEND.rawValue, IORING_OP_SEND_ZC.rawValue:
                result = send(
                    descriptor, buffer, count,
                    Int32(bitPattern: entry.msg_flags) | Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
            case IORING_OP_RECVMSG.rawValue:
                result = recvmsg(
                    descriptor, buffer?.assumingMemoryBound(to: msghdr.self),
                    Int32(bitPattern: entry.msg_flags) | Int32(MSG_DONTWAIT))
            case IORING_OP_SENDMSG.rawValue:
                result = sendmsg(
                    descriptor, buffer?.assumingMemoryBound(to: msghdr.self),
                    Int32(bitPattern: entry.msg_flags) | Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
            case IORING_OP_ACCEPT.rawValue:
                // addr2 (the `off` field) points at the address length.
                result = Int(
                    CLiburing_accept4(
                        descriptor, buffer?.assumingMemoryBound(to: sockaddr.self),
                        UnsafeMutablePointer<socklen_t>(bitPattern: UInt(entry.off)),
                        Int32(bitPattern: entry.accept_flags)))
            case IORING_OP_CONNECT.rawValue:
                return isConnecting ? connectOutcome(descriptor) : startConnect(entry, descriptor)
            case IORING_OP_READ.rawValue:
                result = read(descriptor, buffer, count)
            case IORING_OP_WRITE.rawValue:
                result = write(descriptor, buffer, count)
            default:
                return .completed(-EINVAL, drained: false)
            }
            if result >= 0 { return .completed(Int32(clamping: result), drained: false) }
            let error = Glibc.errno
            if error == EINTR { continue }
            return error == EAGAIN || error == EWOULDBLOCK ? .wouldBlock : .completed(-error, drained: false)
        }
    }

    /// `connect` on a non-blocking socket: done, failed, or under way.
    private static func startConnect(_ entry: io_uring_sqe, _ descriptor: Int32) -> ReadinessAttempt {
        // The address length travels in the `off` field.
        let address = UnsafePointer<sockaddr>(bitPattern: UInt(entry.addr))
        if connect(descriptor, address, socklen_t(truncatingIfNeeded: entry.off)) == 0 {
            return .completed(0, drained: false)
        }
        let error = Glibc.errno
        // EINTR: the connection goes on in the background, as with EINPROGRESS.
        return error == EINPROGRESS || error == EINTR ? .connecting : .completed(-error, drained: false)
    }

    /// The result the connect under way on TCP socket `descriptor` ended with, learnt after a
    /// read on the socket failed with `readResult`; nil while the connect is still under way.
    ///
    /// A failed connection attempt leaves its error in `SO_ERROR`, which reading clears: when one
    /// is there it is the connect's now (this read cleared it). When none is left but the socket
    /// is closed instead of still sending its SYN, the failed read took it: the connect ends with
    /// the read's result. Checking later, the connect would find the socket neither failed nor
    /// connected, and wait for good.
    static func connectResult(_ descriptor: Int32, afterReadFailedWith readResult: Int32) -> Int32? {
        guard let error = pendingError(of: descriptor) else { return nil }
        if error != 0 { return -error }
        var information = tcp_info()
        var informationLength = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(descriptor, Int32(IPPROTO_TCP), TCP_INFO, &information, &informationLength) == 0 else {
            return nil
        }
        return information.tcpi_state == UInt8(TCP_CLOSE) ? readResult : nil
    }

    /// The socket's pending error (`SO_ERROR`, cleared by reading it), or nil when it cannot be
    /// read (`errno` says why).
    private static func pendingError(of descriptor: Int32) -> Int32? {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &error, &length) == 0 ? error : nil
    }

    /// The outcome of a connect that was under way: its error, or still connecting.
    private static func connectOutcome(_ descriptor: Int32) -> ReadinessAttempt {
        guard let error = pendingError(of: descriptor) else { return .completed(-Glibc.errno, drained: false) }
        if error != 0 { return .completed(-error, drained: false) }
        var peer = sockaddr_storage()
        var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let connected = withUnsafeMutablePointer(to: &peer) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(descriptor, $0, &peerLength) }
        }
        if connected == 0 { return .completed(0, drained: false) }
        return Glibc.errno == ENOTCONN ? .connecting : .completed(-Glibc.errno, drained: false)
    }
}
