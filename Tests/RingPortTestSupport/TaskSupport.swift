import Foundation
import Glibc
import RingPort
import Testing

/// The loopback address with port 0 (the kernel picks one).
package func loopbackAnyPort() throws -> SocketAddress {
    try SocketAddress(host: "127.0.0.1", port: 0)
}

/// Polls `condition` every 2 ms until it holds or `timeout` passes; returns whether it held.
/// The timeout is a bound that fails the caller's expectation, never a measurement.
package func eventuallyAsync(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(2))
    }
    return condition()
}

/// Runs `body` on a thread of its own (blocking code such as ``BlockingClient`` or
/// ``EchoLoad``) and returns its result without blocking a thread of Swift's pool.
package func onThread<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) async throws -> Value {
    try await withCheckedThrowingContinuation { continuation in
        do {
            _ = try PThread(name: "test-blocking", detached: true) {
                continuation.resume(with: Result<Value, any Error> { try body() })
            }
        } catch {
            continuation.resume(throwing: error)
        }
    }
}

/// The number of open descriptors other than timer descriptors and pipes. Swift's global
/// executor (libdispatch) creates and closes timerfds for `Task.sleep` as timers come and go, and
/// under `make sanitize` ThreadSanitizer starts its symbolizer (two pipes, kept open) the first
/// time it looks at a stack; RingPort creates neither, so leaving them out makes the count
/// RingPort's (and the tests').
package func nonTimerDescriptorCount() -> Int {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return entries.count { entry in
        let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)")) ?? ""
        return target != "anon_inode:[timerfd]" && !target.hasPrefix("pipe:")
    }
}

/// What this process's descriptors are (for failure messages).
package func describeDescriptors() -> String {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return entries.sorted { (Int($0) ?? 0) < (Int($1) ?? 0) }.map { entry in
        let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)")) ?? "?"
        return "\(entry)→\(target)"
    }.joined(separator: " ")
}
