import Glibc
import SystemPackage

/// Thin, typed wrappers over the socket system calls a TCP server or client needs before its
/// descriptors are associated with a ``CompletionPort``. Every failure throws a
/// ``RingPortError`` (``RingPortError/Code/systemCallFailed``) naming the call and the `errno`.
///
/// Stateless; safe to call from any thread.
public enum TCPSocket {
    /// Options for ``makeListener(address:options:)``.
    public struct ListenerOptions: Sendable {
        /// The `listen(2)` backlog.
        public var backlog: Int32 = 1024
        /// `SO_REUSEADDR`: rebind at once after a restart.
        public var reuseAddress = true
        /// `SO_REUSEPORT`: let several listeners share the port.
        public var reusePort = false

        /// The defaults: backlog 1024, `SO_REUSEADDR` on, `SO_REUSEPORT` off.
        public init() {}
    }

    /// Creates a TCP socket bound to `address` and listening. The caller owns the descriptor.
    public static func makeListener(
        address: SocketAddress, options: ListenerOptions = .init()
    ) throws(RingPortError) -> Int32 {
        let descriptor = try makeSocket(family: address.protocolFamily)
        do {
            if options.reuseAddress { try setOption(descriptor, SOL_SOCKET, SO_REUSEADDR, 1, name: "SO_REUSEADDR") }
            if options.reusePort { try setOption(descriptor, SOL_SOCKET, SO_REUSEPORT, 1, name: "SO_REUSEPORT") }
            if address.family == .ipv6 {
                try setOption(descriptor, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1, name: "IPV6_V6ONLY")
            }
            try SystemCall.check(address.withSocketAddress { bind(descriptor, $0, $1) }, "bind \(address)")
            try SystemCall.check(listen(descriptor, options.backlog), "listen \(address)")
        } catch {
            SystemCall.close(descriptor)
            throw error
        }
        return descriptor
    }

    /// Creates an unconnected TCP socket of `family` (`AF_INET` / `AF_INET6`), close-on-exec.
    public static func makeSocket(family: Int32) throws(RingPortError) -> Int32 {
        let descriptor = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_TCP))
        try SystemCall.check(descriptor, "socket")
        return descriptor
    }

    /// Connects a new socket to `address`, blocking until connected. The caller owns it.
    public static func connect(to address: SocketAddress) throws(RingPortError) -> Int32 {
        let descriptor = try makeSocket(family: address.protocolFamily)
        do {
            try connect(descriptor, to: address)
        } catch {
            SystemCall.close(descriptor)
            throw error
        }
        return descriptor
    }

    /// Connects the caller's socket (from ``makeSocket(family:)``) to `address`, blocking until
    /// connected: for options that must be set before the connect (`SO_RCVBUF`, whose window
    /// the handshake announces). The caller keeps owning it, also when this throws.
    public static func connect(_ descriptor: Int32, to address: SocketAddress) throws(RingPortError) {
        try SystemCall.check(address.withSocketAddress { Glibc.connect(descriptor, $0, $1) }, "connect \(address)")
    }

    /// The address a socket is bound to (`getsockname`), e.g. to learn the port the kernel
    /// chose for port 0.
    public static func localAddress(of descriptor: Int32) throws(RingPortError) -> SocketAddress {
        try SystemCall.socketAddress(of: descriptor, "getsockname", getsockname)
    }

    /// The address of a connected socket's peer (`getpeername`).
    public static func peerAddress(of descriptor: Int32) throws(RingPortError) -> SocketAddress {
        try SystemCall.socketAddress(of: descriptor, "getpeername", getpeername)
    }

    /// Shuts down the sending side of a connected socket (`shutdown(SHUT_WR)`): the peer reads
    /// an end of stream once the bytes sent before have arrived; receiving goes on. Call it after
    /// the last send completed. For a descriptor associated with a port, whose handle another
    /// thread may close, use ``CompletionPort/shutdownWriting(_:)``.
    ///
    /// - Throws: ``RingPortError/Code/systemCallFailed`` with `ENOTCONN` when the connection is
    ///   gone already.
    public static func shutdownWriting(_ descriptor: Int32) throws(RingPortError) {
        try shutdown(descriptor, .writing)
    }

    /// One side of a socket, for `shutdown(2)`.
    enum ShutdownDirection {
        case reading, writing

        /// The call, as errors name it.
        var callName: String {
            switch self {
            case .reading: "shutdown(SHUT_RD)"
            case .writing: "shutdown(SHUT_WR)"
            }
        }
    }

    /// `shutdown(2)` of one side of `descriptor`.
    static func shutdown(_ descriptor: Int32, _ direction: ShutdownDirection) throws(RingPortError) {
        let how = direction == .reading ? SHUT_RD : SHUT_WR
        try SystemCall.check(Glibc.shutdown(descriptor, Int32(how)), direction.callName)
    }

    /// Disables Nagle's algorithm (`TCP_NODELAY`).
    public static func setNoDelay(_ descriptor: Int32) throws(RingPortError) {
        try setOption(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, 1, name: "TCP_NODELAY")
    }

    /// Sets an integer socket option (for the typed wrappers of this module; `name` names the
    /// option in the error).
    static func setOption(
        _ descriptor: Int32, _ level: Int32, _ option: Int32, _ value: Int32, name: String
    ) throws(RingPortError) {
        var value = value
        try SystemCall.check(
            setsockopt(descriptor, level, option, &value, socklen_t(MemoryLayout<Int32>.size)), "setsockopt \(name)")
    }
}
