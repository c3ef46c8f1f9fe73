import Glibc
import RingPort

/// The client side of an echo round trip benchmark: a blocking loopback socket that sends one
/// message and reads it back, with no allocation and no reference count touched per round trip.
///
/// Not thread-safe: the benchmark's thread uses it (made in the set-up, closed in the tear-down).
package final class BlockingEchoClient {
    let descriptor: Int32
    let messageSize: Int
    /// The message, sent and received in place; allocated once, freed in `close()`.
    private let message: UnsafeMutableRawPointer

    /// Connects to `address`; the message is `messageSize` bytes of a counting pattern.
    package init(connectingTo address: SocketAddress, messageSize: Int) throws {
        descriptor = try TCPSocket.connect(to: address)
        self.messageSize = messageSize
        message = .allocate(byteCount: messageSize, alignment: 16)
        for index in 0..<messageSize {
            message.storeBytes(of: UInt8(truncatingIfNeeded: index), toByteOffset: index, as: UInt8.self)
        }
    }

    /// Sends the message and reads the echo back.
    @inline(__always)
    package func roundTrip() throws {
        let count = messageSize
        var sent = 0
        while sent < count {
            let result = send(descriptor, message + sent, count - sent, Int32(MSG_NOSIGNAL))
            guard result > 0 else { throw BenchmarkFailure(description: "send: errno \(errno)") }
            sent += result
        }
        var received = 0
        while received < count {
            let result = recv(descriptor, message + received, count - received, 0)
            guard result > 0 else { throw BenchmarkFailure(description: "recv: \(result), errno \(errno)") }
            received += result
        }
    }

    package func close() {
        Glibc.close(descriptor)
        message.deallocate()
    }
}
