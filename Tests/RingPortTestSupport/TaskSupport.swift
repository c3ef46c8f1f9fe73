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

/// The descriptors this process has open at one moment, to tell afterwards which of the ones a
/// test opened are still open. Counting is not enough: a descriptor of an earlier test that
/// closes late (a port shutting down, a socket the kernel releases after its peer) lowers the
/// count and hides one the test leaked. Each descriptor is its number and what it refers to
/// (`socket:[inode]`, `anon_inode:[eventfd]`), so a number reused for something else counts as new.
///
/// Timer descriptors and pipes are left out: Swift's global executor (libdispatch) creates and
/// closes timerfds for `Task.sleep` as timers come and go, and under `make sanitize`
/// ThreadSanitizer starts its symbolizer (two pipes, kept open) the first time it looks at a
/// stack; RingPort creates neither.
package struct DescriptorSnapshot: Sendable {
    private let descriptors: Set<String>

    /// Records the descriptors open now.
    package init() {
        descriptors = Self.openDescriptors()
    }

    /// The descriptors open now that were not open at the snapshot, as `number→target`.
    package var openedSince: [String] {
        Self.openDescriptors().subtracting(descriptors).sorted()
    }

    /// Whether every descriptor opened since the snapshot is closed again.
    package var allClosedAgain: Bool { openedSince.isEmpty }

    private static func openDescriptors() -> Set<String> {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return Set(
            entries.compactMap { entry in
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)"))
                guard let target, target != "anon_inode:[timerfd]", !target.hasPrefix("pipe:") else { return nil }
                return "\(entry)→\(target)"
            })
    }
}
