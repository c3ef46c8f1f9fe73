import Foundation
import RingPort
import RingPortAsync
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension AsyncPort.Resumption: CustomTestStringConvertible {
    public var testDescription: String {
        switch self {
        case .portWorkers: "port workers"
        case .globalExecutor: "global executor"
        }
    }
}

/// An async port with one ring (and the default six workers) resuming tasks as asked.
func makeAsyncPort(_ resumption: AsyncPort.Resumption = .portWorkers, receiveBufferSize: Int = 16384) throws -> AsyncPort {
    var configuration = AsyncPort.Configuration()
    configuration.port.ringCount = 1
    configuration.resumption = resumption
    configuration.receiveBufferSize = receiveBufferSize
    return try AsyncPort(configuration: configuration)
}

/// The loopback address with port 0 (the kernel picks one).
func loopbackAnyPort() throws -> SocketAddress {
    try SocketAddress(host: "127.0.0.1", port: 0)
}

/// Polls `condition` every 2 ms until it holds or `timeout` passes; returns whether it held.
/// The timeout is a bound that fails the caller's expectation, never a measurement.
func eventuallyAsync(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(2))
    }
    return condition()
}

/// Runs `body` on a thread of its own (blocking code such as ``BlockingClient`` or
/// ``EchoLoad``) and returns its result without blocking a thread of Swift's pool.
func onThread<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) async throws -> Value {
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
func nonTimerDescriptorCount() -> Int {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return entries.count { entry in
        let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)")) ?? ""
        return target != "anon_inode:[timerfd]" && !target.hasPrefix("pipe:")
    }
}

/// Expects the async port to be idle (no operation in flight, no completion waiting), shuts it
/// down, and expects the process's descriptors to come back to `descriptorsBefore`.
func expectCleanShutdown(
    _ asyncPort: AsyncPort, descriptorsBefore: Int, sourceLocation: SourceLocation = #_sourceLocation
) async {
    let idle = await eventuallyAsync {
        let statistics = asyncPort.statistics
        return statistics.operationsInFlight == 0 && statistics.completionsWaiting == 0
    }
    #expect(idle, "still in flight: \(asyncPort.statistics)", sourceLocation: sourceLocation)
    #expect(asyncPort.statistics.staleCompletions == 0, sourceLocation: sourceLocation)
    await asyncPort.shutdown()
    let released = await eventuallyAsync { nonTimerDescriptorCount() == descriptorsBefore }
    #expect(released, "descriptors: \(nonTimerDescriptorCount()) open, \(descriptorsBefore) before: \(describeDescriptors())", sourceLocation: sourceLocation)
}

/// The name of the calling thread.
func currentThreadName() -> String {
    let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? ""
    return name.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// What this process's descriptors are (for failure messages).
func describeDescriptors() -> String {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return entries.sorted { (Int($0) ?? 0) < (Int($1) ?? 0) }.map { entry in
        let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)")) ?? "?"
        return "\(entry)→\(target)"
    }.joined(separator: " ")
}
