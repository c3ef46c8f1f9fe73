import Glibc
import NIOCore
import RingPort

/// The socket system calls of the NIO layer, each checked: a failure throws SwiftNIO's
/// `IOError` with the `errno` and the call, as NIOPosix would. Stateless; any thread.
enum NIOSocketCalls {
    /// Throws `IOError` unless `result` is at least 0.
    @inline(__always)
    static func check(_ result: Int32, _ call: @autoclosure () -> String) throws(IOError) {
        if result < 0 { throw IOError(errnoCode: errno, reason: call()) }
    }

    /// The `IOError` for a completion's or a port call's failure.
    static func ioError(_ error: RingPortError) -> IOError {
        IOError(errnoCode: error.errno?.rawValue ?? EIO, reason: error.operation)
    }

    /// A new TCP socket (close-on-exec) of `family`.
    static func makeSocket(family: Int32) throws(IOError) -> Int32 {
        let descriptor = socket(family, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        try check(descriptor, "socket")
        return descriptor
    }

    static func bind(_ descriptor: Int32, to address: NIOCore.SocketAddress) throws(IOError) {
        let result = address.withSockAddr { pointer, size in Glibc.bind(descriptor, pointer, socklen_t(size)) }
        try check(result, "bind(\(address))")
    }

    static func listen(_ descriptor: Int32, backlog: Int32) throws(IOError) {
        try check(Glibc.listen(descriptor, backlog), "listen")
    }

    static func setOption(_ descriptor: Int32, level: Int32, name: Int32, value: Int32) throws(IOError) {
        var value = value
        try check(
            setsockopt(descriptor, level, name, &value, socklen_t(MemoryLayout<Int32>.size)), "setsockopt(\(name))")
    }

    static func option(_ descriptor: Int32, level: Int32, name: Int32) throws(IOError) -> Int32 {
        var value: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        try check(getsockopt(descriptor, level, name, &value, &size), "getsockopt(\(name))")
        return value
    }

    static func localAddress(of descriptor: Int32) throws(IOError) -> NIOCore.SocketAddress {
        try address { pointer, size in getsockname(descriptor, pointer, size) }
    }

    static func peerAddress(of descriptor: Int32) throws(IOError) -> NIOCore.SocketAddress {
        try address { pointer, size in getpeername(descriptor, pointer, size) }
    }

    private static func address(
        _ call: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32
    ) throws(IOError) -> NIOCore.SocketAddress {
        var storage = sockaddr_storage()
        var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, &size) }
        }
        try check(result, "getsockname")
        return try convert(storage)
    }

    /// A NIO address from a `sockaddr_storage` (IPv4 or IPv6).
    static func convert(_ storage: sockaddr_storage) throws(IOError) -> NIOCore.SocketAddress {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafeBytes(of: &storage) { raw in
                NIOCore.SocketAddress(raw.load(as: sockaddr_in.self), host: "")
            }
        case AF_INET6:
            return withUnsafeBytes(of: &storage) { raw in
                NIOCore.SocketAddress(raw.load(as: sockaddr_in6.self), host: "")
            }
        default:
            throw IOError(errnoCode: EAFNOSUPPORT, reason: "address family \(storage.ss_family)")
        }
    }

    /// The port's address type for a NIO one (IPv4 or IPv6).
    static func portAddress(_ address: NIOCore.SocketAddress) throws(IOError) -> RingPort.SocketAddress {
        guard let host = address.ipAddress, let port = address.port, let value = UInt16(exactly: port) else {
            throw IOError(errnoCode: EAFNOSUPPORT, reason: "connect to \(address): only IP addresses")
        }
        do {
            return try RingPort.SocketAddress(host: host, port: value)
        } catch {
            throw IOError(errnoCode: EINVAL, reason: "address \(address)")
        }
    }
}
