import Glibc

/// An IPv4 or IPv6 socket address (address and port).
///
/// A value type, safe to pass between threads. The address is kept inline: making one (e.g.
/// for every accepted connection) allocates nothing.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// The address family.
    public enum Family: Hashable, Sendable {
        /// IPv4 (`AF_INET`).
        case ipv4
        /// IPv6 (`AF_INET6`).
        case ipv6
    }

    /// The address family.
    public let family: Family
    /// The port, in host byte order.
    public let port: UInt16
    /// The IPv6 scope (interface index); 0 for IPv4.
    public let scopeID: UInt32
    /// The address bytes in network order: the first 4 for IPv4, all 16 for IPv6, the rest 0.
    private let inlineBytes: InlineBytes

    /// 16 bytes held inline (two words), compared and hashed as such.
    private struct InlineBytes: Hashable, Sendable {
        private var first: UInt64 = 0
        private var second: UInt64 = 0

        /// The bytes of `value` (an `in_addr` or an `in6_addr`), zero-padded.
        init<Address>(of value: Address) {
            precondition(MemoryLayout<Address>.size <= MemoryLayout<InlineBytes>.size)
            withUnsafeMutableBytes(of: &self) { target in
                withUnsafeBytes(of: value) { target.copyMemory(from: $0) }
            }
        }

        /// Copies the first `MemoryLayout<Address>.size` bytes into `value`.
        func copy<Address>(into value: inout Address) {
            withUnsafeBytes(of: self) { source in
                withUnsafeMutableBytes(of: &value) {
                    $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[..<$0.count]))
                }
            }
        }

        func prefix(_ count: Int) -> [UInt8] {
            withUnsafeBytes(of: self) { Array($0.prefix(count)) }
        }
    }

    /// The address bytes in network order: 4 for IPv4, 16 for IPv6.
    public var addressBytes: [UInt8] {
        inlineBytes.prefix(family == .ipv4 ? 4 : 16)
    }

    /// Parses a numeric IPv4 (`127.0.0.1`) or IPv6 (`::1`) address; `localhost` means `127.0.0.1`.
    ///
    /// - Throws: ``RingPortError`` with ``RingPortError/Code/invalidArgument`` when `host` is
    ///   neither.
    public init(host: String, port: UInt16) throws(RingPortError) {
        let literal = host == "localhost" ? "127.0.0.1" : host
        var ipv4 = in_addr()
        if inet_pton(AF_INET, literal, &ipv4) == 1 {
            family = .ipv4
            inlineBytes = InlineBytes(of: ipv4)
        } else {
            var ipv6 = in6_addr()
            let unbracketed =
                literal.hasPrefix("[") && literal.hasSuffix("]")
                ? String(literal.dropFirst().dropLast()) : literal
            guard inet_pton(AF_INET6, unbracketed, &ipv6) == 1 else {
                throw RingPortError(
                    .invalidArgument, operation: "parse address \"\(host)\" (a numeric IPv4 or IPv6 address is needed)")
            }
            family = .ipv6
            inlineBytes = InlineBytes(of: ipv6)
        }
        self.port = port
        scopeID = 0
    }

    /// Reads an address the kernel filled in (accept, getsockname). Nil for other families.
    init?(storage: sockaddr_storage, length: socklen_t) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET where length >= MemoryLayout<sockaddr_in>.size:
            let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
            family = .ipv4
            port = UInt16(bigEndian: address.sin_port)
            inlineBytes = InlineBytes(of: address.sin_addr)
            scopeID = 0
        case AF_INET6 where length >= MemoryLayout<sockaddr_in6>.size:
            let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
            family = .ipv6
            port = UInt16(bigEndian: address.sin6_port)
            inlineBytes = InlineBytes(of: address.sin6_addr)
            scopeID = address.sin6_scope_id
        default:
            return nil
        }
    }

    /// The same address with another port.
    public func withPort(_ port: UInt16) -> SocketAddress {
        SocketAddress(family: family, port: port, inlineBytes: inlineBytes, scopeID: scopeID)
    }

    private init(family: Family, port: UInt16, inlineBytes: InlineBytes, scopeID: UInt32) {
        self.family = family
        self.port = port
        self.inlineBytes = inlineBytes
        self.scopeID = scopeID
    }

    /// The `AF_*` constant of the family.
    public var protocolFamily: Int32 {
        family == .ipv4 ? AF_INET : AF_INET6
    }

    /// Writes the address as a `sockaddr_storage` and returns the length that is valid.
    func write(to storage: inout sockaddr_storage) -> socklen_t {
        storage = sockaddr_storage()
        switch family {
        case .ipv4:
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            inlineBytes.copy(into: &address.sin_addr)
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: address, as: sockaddr_in.self) }
            return socklen_t(MemoryLayout<sockaddr_in>.size)
        case .ipv6:
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            address.sin6_scope_id = scopeID
            inlineBytes.copy(into: &address.sin6_addr)
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: address, as: sockaddr_in6.self) }
            return socklen_t(MemoryLayout<sockaddr_in6>.size)
        }
    }

    /// Calls `body` with a `sockaddr` pointer and its length, valid during the call only.
    func withSocketAddress<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Result) rethrows -> Result {
        var storage = sockaddr_storage()
        let length = write(to: &storage)
        return try withUnsafePointer(to: &storage) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }

    /// `127.0.0.1:8888` or `[::1]:8888`.
    public var description: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        withUnsafeBytes(of: inlineBytes) { bytes in
            _ = inet_ntop(protocolFamily, bytes.baseAddress, &text, socklen_t(text.count))
        }
        let host = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return family == .ipv4 ? "\(host):\(port)" : "[\(host)]:\(port)"
    }
}
