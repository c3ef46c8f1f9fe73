import Glibc
import RingPort
import Testing

extension RingPortTests {
    /// Socket addresses: parsed, written for the kernel, read back from it.
    @Suite struct SocketAddressTests {
        @Test func parsesIPv4AndIPv6Literals() throws {
            let ipv4 = try SocketAddress(host: "192.168.7.254", port: 8080)
            #expect(ipv4.family == .ipv4 && ipv4.protocolFamily == AF_INET)
            #expect(ipv4.addressBytes == [192, 168, 7, 254])
            #expect(ipv4.port == 8080 && ipv4.scopeID == 0)
            #expect(ipv4.description == "192.168.7.254:8080")
            #expect(try SocketAddress(host: "localhost", port: 1) == SocketAddress(host: "127.0.0.1", port: 1))

            let ipv6 = try SocketAddress(host: "[2001:db8::ff:1]", port: 443)
            #expect(ipv6.family == .ipv6 && ipv6.protocolFamily == AF_INET6)
            #expect(ipv6.addressBytes == [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 8) + [0, 0xff, 0, 1])
            #expect(ipv6.description == "[2001:db8::ff:1]:443")
            #expect(try ipv6 == SocketAddress(host: "2001:db8::ff:1", port: 443))
        }

        @Test(arguments: ["", "localhost:80", "256.1.1.1", "example.com", "::g"])
        func rejectsWhatIsNotANumericAddress(host: String) {
            #expect {
                try SocketAddress(host: host, port: 80)
            } throws: { error in
                (error as? RingPortError)?.code == .invalidArgument
            }
        }

        /// Equality and hashing follow family, address and port: an IPv4 address is not the
        /// IPv6 one that starts with the same bytes, and another port is another address.
        @Test func equalityCoversFamilyAddressAndPort() throws {
            let ipv4 = try SocketAddress(host: "1.2.3.4", port: 9)
            let ipv6 = try SocketAddress(host: "102:304::", port: 9)
            #expect(ipv4.addressBytes == Array(ipv6.addressBytes.prefix(4)))
            #expect(ipv4 != ipv6)
            #expect(ipv4.withPort(10) != ipv4 && ipv4.withPort(10).withPort(9) == ipv4)
            #expect(Set([ipv4, ipv6, ipv4.withPort(9), ipv6.withPort(10)]).count == 3)
        }

        /// An address written for `bind` comes back equal from the kernel (`getsockname`).
        @Test(arguments: ["127.0.0.1", "::1"])
        func bindsAndReadsBackTheSameAddress(host: String) throws {
            let wanted = try SocketAddress(host: host, port: 0)
            let descriptor = try UDPSocket.makeBound(to: wanted)
            defer { close(descriptor) }
            let bound = try UDPSocket.localAddress(of: descriptor)
            #expect(bound.port != 0)
            #expect(bound == wanted.withPort(bound.port))
            #expect(bound.description.hasSuffix(":\(bound.port)"))
        }
    }
}
