import Foundation
import Glibc
import RingPort
import Testing

/// A test client that drives many TCP connections from one thread with poll(2): each connection
/// sends its messages (random bytes of random sizes) while reading back what the server echoes,
/// and checks every byte in order.
package struct EchoLoad {
    package struct Result {
        package var connections = 0
        package var bytesSent = 0
        package var bytesVerified = 0
        package var mismatches = 0
        package var prematureCloses = 0
        package var unfinished = 0
        package var connectFailures = 0

        package var isClean: Bool {
            mismatches == 0 && prematureCloses == 0 && unfinished == 0 && connectFailures == 0
        }
    }

    private final class Connection {
        let descriptor: Int32
        let expected: [UInt8]
        var sent = 0
        var received = 0
        var done = false

        init(descriptor: Int32, expected: [UInt8]) {
            self.descriptor = descriptor
            self.expected = expected
        }
    }

    package var connections: Int
    package var messagesPerConnection: Int
    package var maximumMessageSize: Int
    package var seed: UInt64 = 1
    package var timeout: Duration = .seconds(60)

    package init(
        connections: Int, messagesPerConnection: Int, maximumMessageSize: Int, seed: UInt64 = 1,
        timeout: Duration = .seconds(60)
    ) {
        self.connections = connections
        self.messagesPerConnection = messagesPerConnection
        self.maximumMessageSize = maximumMessageSize
        self.seed = seed
        self.timeout = timeout
    }

    /// Runs the load against `address` and reports what it saw.
    package func run(against address: SocketAddress) -> Result {
        var generator = SeededGenerator(state: seed)
        var result = Result()
        var open: [Connection] = []
        for _ in 0..<connections {
            var stream: [UInt8] = []
            for _ in 0..<messagesPerConnection {
                let size = Int.random(in: 1...maximumMessageSize, using: &generator)
                stream += generator.bytes(count: size)
            }
            guard let descriptor = try? TCPSocket.connect(to: address) else {
                result.connectFailures += 1
                continue
            }
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            open.append(Connection(descriptor: descriptor, expected: stream))
            result.bytesSent += stream.count
        }
        result.connections = open.count
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        let deadline = ContinuousClock.now + timeout
        var active = open
        while !active.isEmpty && ContinuousClock.now < deadline {
            var descriptors = active.map { connection -> pollfd in
                var events = Int16(POLLIN)
                if connection.sent < connection.expected.count { events |= Int16(POLLOUT) }
                return pollfd(fd: connection.descriptor, events: events, revents: 0)
            }
            guard poll(&descriptors, nfds_t(descriptors.count), 100) >= 0 else { continue }
            for (position, connection) in active.enumerated() where descriptors[position].revents != 0 {
                if connection.sent < connection.expected.count && descriptors[position].revents & Int16(POLLOUT) != 0 {
                    let count = min(connection.expected.count - connection.sent, 64 * 1024)
                    let written = connection.expected.withUnsafeBytes {
                        send(connection.descriptor, $0.baseAddress! + connection.sent, count, Int32(MSG_NOSIGNAL))
                    }
                    if written > 0 { connection.sent += written }
                }
                let revents = descriptors[position].revents
                if revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                    let count = buffer.withUnsafeMutableBytes {
                        recv(connection.descriptor, $0.baseAddress!, $0.count, 0)
                    }
                    if count > 0 {
                        let end = connection.received + count
                        let matches =
                            end <= connection.expected.count
                            && buffer.withUnsafeBytes { received in
                                connection.expected.withUnsafeBytes { expected in
                                    memcmp(received.baseAddress!, expected.baseAddress! + connection.received, count)
                                        == 0
                                }
                            }
                        if !matches {
                            result.mismatches += 1
                            connection.done = true
                        } else {
                            connection.received = end
                            result.bytesVerified += count
                            if end == connection.expected.count { connection.done = true }
                        }
                    } else if count == 0 || (errno != EAGAIN && errno != EINTR) {
                        result.prematureCloses += 1
                        connection.done = true
                    }
                }
            }
            for connection in active where connection.done {
                Glibc.close(connection.descriptor)
            }
            active.removeAll { $0.done }
        }
        result.unfinished = active.count
        for connection in active { Glibc.close(connection.descriptor) }
        return result
    }
}

extension EchoLoad {
    /// Runs the load and expects every connection to be served and every byte echoed exactly.
    package func expectCleanRun(against address: SocketAddress, sourceLocation: SourceLocation = #_sourceLocation) {
        let result = run(against: address)
        #expect(result.connections == connections, sourceLocation: sourceLocation)
        #expect(result.isClean, "\(result)", sourceLocation: sourceLocation)
        #expect(result.bytesVerified == result.bytesSent, sourceLocation: sourceLocation)
    }
}
