// Micro benchmarks of the server path: a TCPServer echo round trip through a ConnectionHandler
// (accept done in the set-up; per iteration, the benchmark's thread sends 128 bytes or 16 KiB on
// a blocking loopback socket and reads them back while the server's worker receives them
// (multishot into a provided buffer), hands them to EchoHandler, and sends them back).
//
// Counts are per round trip and cover every thread of the process: the server's worker and the
// benchmark's client, whose send and recv make no allocation and touch no reference count. The
// server runs one worker on one ring so that the counts do not depend on which thread handled
// what (with the default six, a standby sentry waking every few milliseconds adds a little).

import Benchmark
import Glibc
import RingPort
import RingPortServer

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .retainCount, .releaseCount, .throughput],
        warmupIterations: 3,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000,
        thresholds: ServerBenchmarkThresholds.tolerances
    )

    for size in [128, 16_384] {
        let fixture = Fixture<ServerEchoFixture>()
        Benchmark("ServerEchoRoundTrip\(size == 128 ? "128B" : "16KiB")") { benchmark in
            let value = fixture.value!
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                try value.roundTrip()
            }
            benchmark.stopMeasurement()
        } setup: {
            fixture.value = try ServerEchoFixture(messageSize: size)
        } teardown: {
            fixture.take()?.close()
        }
    }
}

/// The tolerances of `swift package benchmark thresholds check` for the p90 values stored in
/// Thresholds/ (one sample = 1,000 round trips): allocations ±10 per 1,000 (the budget is 0),
/// retains and releases ±2% (one more per round trip, +1,000, fails), wall clock +300% (a shared
/// 2-core VM).
enum ServerBenchmarkThresholds {
    static var tolerances: [BenchmarkMetric: BenchmarkThresholds] {
        [
            .mallocCountTotal: .init(absolute: [.p90: 10]),
            .retainCount: .init(relative: [.p90: 2], absolute: [.p90: 50]),
            .releaseCount: .init(relative: [.p90: 2], absolute: [.p90: 50]),
            .wallClock: .init(relative: [.p90: 300]),
            .throughput: .none,
        ]
    }
}

/// State a benchmark's setup hook builds, its closure uses and its teardown hook closes. The
/// framework runs the three one after the other, never at once.
final class Fixture<Value>: @unchecked Sendable {
    // @unchecked: `value` is written by the setup and teardown hooks and read by the benchmark
    // closure, which the framework runs one after the other (never at once).
    var value: Value?

    func take() -> Value? {
        defer { value = nil }
        return value
    }
}

/// A benchmark failed: the server misbehaved.
struct BenchmarkFailure: Error, CustomStringConvertible {
    let description: String
}

/// An echo server (one worker, one ring) and one connected blocking client.
final class ServerEchoFixture {
    let server: TCPServer
    let client: Int32
    let messageSize: Int
    /// The message, sent and received in place; allocated once, freed in `close()`.
    private let message: UnsafeMutableRawPointer

    init(messageSize: Int) throws {
        self.messageSize = messageSize
        var configuration = TCPServer.Configuration(address: try SocketAddress(host: "127.0.0.1", port: 0))
        configuration.port.ringCount = 1
        configuration.port.workerCount = 1
        configuration.port.logger.logLevel = .error
        configuration.logger.logLevel = .error
        server = try TCPServer(configuration: configuration, handler: EchoHandler())
        try server.start()
        client = try TCPSocket.connect(to: server.localAddress)
        message = .allocate(byteCount: messageSize, alignment: 16)
        for index in 0..<messageSize {
            message.storeBytes(of: UInt8(truncatingIfNeeded: index), toByteOffset: index, as: UInt8.self)
        }
        try roundTrip()
    }

    /// Sends the message and reads the echo back.
    @inline(__always)
    func roundTrip() throws {
        let count = messageSize
        var sent = 0
        while sent < count {
            let result = send(client, message + sent, count - sent, Int32(MSG_NOSIGNAL))
            guard result > 0 else { throw BenchmarkFailure(description: "send: errno \(errno)") }
            sent += result
        }
        var received = 0
        while received < count {
            let result = recv(client, message + received, count - received, 0)
            guard result > 0 else { throw BenchmarkFailure(description: "recv: \(result), errno \(errno)") }
            received += result
        }
    }

    func close() {
        Glibc.close(client)
        server.shutdown(gracePeriod: .seconds(1))
        message.deallocate()
    }
}
