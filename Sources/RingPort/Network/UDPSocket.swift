import Glibc
import SystemPackage

/// Thin, typed wrappers over the socket system calls a UDP endpoint needs before its
/// descriptor is associated with a ``CompletionPort`` and used with
/// ``CompletionPort/receiveMessage(_:into:range:)`` and
/// ``CompletionPort/sendMessage(_:from:range:to:)``. Every failure throws a ``RingPortError``
/// (``RingPortError/Code/systemCallFailed``) naming the call and the `errno`.
///
/// Every descriptor returned is close-on-exec and owned by the caller until it is handed to
/// ``CompletionPort/associate(descriptor:peerAddress:userState:ring:)`` (the handle owns it then).
///
/// Stateless; safe to call from any thread.
public enum UDPSocket {
    /// Options for ``makeBound(to:options:)``. A value type, safe to pass between threads.
    public struct Options: Sendable {
        /// `SO_REUSEADDR`: bind even though the address was just in use.
        public var reuseAddress = false
        /// `SO_REUSEPORT`: let several sockets share the port (the kernel spreads datagrams
        /// over them by sender).
        public var reusePort = false
        /// `IPV6_V6ONLY` for IPv6 addresses: an IPv6 socket does not also receive IPv4
        /// datagrams (mapped addresses). On by default, like ``TCPSocket``'s listeners.
        public var ipv6Only = true

        /// The defaults: no address or port reuse, IPv6 sockets IPv6-only.
        public init() {}
    }

    /// Creates a UDP socket of `family` (`AF_INET` / `AF_INET6`), unbound, close-on-exec.
    /// The caller owns the descriptor.
    public static func makeSocket(family: Int32) throws(RingPortError) -> Int32 {
        let descriptor = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_UDP))
        try SystemCall.check(descriptor, "socket")
        return descriptor
    }

    /// Creates a UDP socket bound to `address` (port 0: the kernel picks one; read it with
    /// ``localAddress(of:)``). The caller owns the descriptor; on failure nothing is left open.
    public static func makeBound(to address: SocketAddress, options: Options = .init()) throws(RingPortError) -> Int32 {
        let descriptor = try makeSocket(family: address.protocolFamily)
        do {
            if options.reuseAddress {
                try TCPSocket.setOption(descriptor, SOL_SOCKET, SO_REUSEADDR, 1, name: "SO_REUSEADDR")
            }
            if options.reusePort {
                try TCPSocket.setOption(descriptor, SOL_SOCKET, SO_REUSEPORT, 1, name: "SO_REUSEPORT")
            }
            if address.family == .ipv6 {
                try TCPSocket.setOption(
                    descriptor, Int32(IPPROTO_IPV6), IPV6_V6ONLY, options.ipv6Only ? 1 : 0, name: "IPV6_V6ONLY")
            }
            try SystemCall.check(address.withSocketAddress { bind(descriptor, $0, $1) }, "bind \(address)")
        } catch {
            SystemCall.close(descriptor)
            throw error
        }
        return descriptor
    }

    /// Connects a UDP socket to `address` (`connect(2)`; returns at once, nothing is sent):
    /// afterwards the socket receives datagrams from that address only, may send without an
    /// address (``CompletionPort/sendMessage(_:from:range:to:)`` with `to: nil`), and reports
    /// errors the network returns — e.g. `ECONNREFUSED` when nobody listens on that port — on
    /// its next receive or send. An unconnected socket never sees such errors.
    public static func connect(_ descriptor: Int32, to address: SocketAddress) throws(RingPortError) {
        try SystemCall.check(address.withSocketAddress { Glibc.connect(descriptor, $0, $1) }, "connect \(address)")
    }

    /// The address a socket is bound to (`getsockname`), e.g. to learn the port the kernel
    /// chose for port 0.
    public static func localAddress(of descriptor: Int32) throws(RingPortError) -> SocketAddress {
        try SystemCall.socketAddress(of: descriptor, "getsockname", getsockname)
    }
}
