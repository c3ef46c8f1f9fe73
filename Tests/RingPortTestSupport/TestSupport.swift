import Foundation
import Glibc
import RingPort
import Testing

/// The number of threads of this process (entries of /proc/self/task).
package func threadCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
}

/// The number of threads of this process whose name (/proc/self/task/TID/comm, at most 15
/// bytes) starts with `prefix`: a pool's own, while other threads come and go.
package func threadCount(named prefix: String) -> Int {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.filter { task in
        let name = try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)
        return name?.hasPrefix(prefix) == true
    }.count
}

/// A connected pair of Unix stream sockets.
package func makeSocketPair() throws -> (Int32, Int32) {
    var descriptors: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &descriptors) == 0 else {
        throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
    }
    return (descriptors[0], descriptors[1])
}

/// Polls `condition` every 5 ms until it holds or `timeout` passes; returns whether it held.
package func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

/// A blocking TCP client for tests: connect, send everything, receive exactly n bytes.
package struct BlockingClient {
    package let descriptor: Int32

    /// Connects to `address`. `receiveBufferSize` (`SO_RCVBUF`) is set before the connect, so
    /// that the window the client advertises is small from the start. Shrunk after the connect,
    /// the buffer drops what the peer already sent into the larger window, and with it the
    /// window updates those segments carry: a client that sends while not reading can then
    /// stall on its own.
    package init(
        connectingTo address: SocketAddress, receiveTimeout: Duration = .seconds(30), receiveBufferSize: Int32? = nil
    ) throws {
        if var size = receiveBufferSize {
            let socket = try TCPSocket.makeSocket(family: address.protocolFamily)
            setsockopt(socket, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            do {
                try TCPSocket.connect(socket, to: address)
            } catch {
                Glibc.close(socket)
                throw error
            }
            descriptor = socket
        } else {
            descriptor = try TCPSocket.connect(to: address)
        }
        let (seconds, attoseconds) = receiveTimeout.components
        var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// A client on a connected socket of the caller's (which keeps owning it).
    package init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    package func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let result = bytes.withUnsafeBytes {
                Glibc.send(descriptor, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL))
            }
            if result < 0 {
                if errno == EINTR { continue }
                throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
            }
            sent += result
        }
    }

    /// Receives what is there (at most `buffer.count` bytes), waiting for at least one byte:
    /// the count, 0 at end of stream, or -1 with `errno` set (a signal is retried, not returned).
    package func receiveSome(into buffer: inout [UInt8]) -> Int {
        while true {
            let result = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
            if result < 0 && errno == EINTR { continue }
            return result
        }
    }

    /// Receives exactly `count` bytes, or fewer if the peer closes first.
    package func receive(count: Int) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var received = 0
        while received < count {
            let result = buffer.withUnsafeMutableBytes {
                recv(descriptor, $0.baseAddress! + received, count - received, 0)
            }
            if result < 0 {
                if errno == EINTR { continue }
                throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
            }
            if result == 0 { break }
            received += result
        }
        return Array(buffer[0..<received])
    }

    /// Sets SO_LINGER to 0 so that close sends a reset.
    package func setResetOnClose() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    }

    package func close() {
        _ = Glibc.close(descriptor)
    }
}

/// A connected pair of TCP sockets on loopback: the client end, and the end a listener accepted
/// (the listener is closed again).
package func makeLoopbackTCPPair() throws -> (client: Int32, accepted: Int32) {
    let listener = try TCPSocket.makeListener(address: SocketAddress(host: "127.0.0.1", port: 0))
    defer { close(listener) }
    let client = try TCPSocket.connect(to: TCPSocket.localAddress(of: listener))
    let accepted = accept(listener, nil, nil)
    guard accepted >= 0 else {
        close(client)
        throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
    }
    return (client, accepted)
}

/// A port with one ring and a small completion queue, for tests that drive a worker by hand.
package func makeSingleRingPort(
    entries: UInt32 = 64, backend: CompletionPort.Backend = .automatic
) throws
    -> CompletionPort
{
    var configuration = CompletionPort.Configuration()
    configuration.backend = backend
    configuration.ringCount = 1
    configuration.ringEntries = entries
    return try CompletionPort(configuration: configuration)
}

/// A value behind an NSLock (ThreadSanitizer understands it; it does not see through
/// `Synchronization.Mutex` on Linux).
package final class LockedBox<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched inside `withLock`, with `lock` held.
    private let lock = NSLock()
    private var value: Value

    package init(_ value: Value) {
        self.value = value
    }

    package func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

/// Where two byte sequences first differ (an index, or the shorter one's length when one is a
/// prefix of the other), nil when they are equal: for comparing large payloads without
/// printing them whole when they differ.
package func firstDifference(_ left: some Collection<UInt8>, _ right: some Collection<UInt8>) -> Int? {
    var index = 0
    var leftIterator = left.makeIterator()
    var rightIterator = right.makeIterator()
    while true {
        switch (leftIterator.next(), rightIterator.next()) {
        case (nil, nil): return nil
        case let (l?, r?) where l == r: index += 1
        default: return index
        }
    }
}

/// Whether this process runs under ThreadSanitizer or AddressSanitizer (`make sanitize`), whose
/// runtimes make the code slower several times over and change how often threads block and
/// wake: tests that count wake-ups do not hold there.
package let isRunningUnderASanitizer: Bool = ["__tsan_init", "__asan_init"].contains { (symbol: String) in
    dlsym(UnsafeMutableRawPointer(bitPattern: 0), symbol) != nil
}
