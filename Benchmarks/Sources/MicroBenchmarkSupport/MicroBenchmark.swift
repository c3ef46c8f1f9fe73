// What the micro benchmark suites (Benchmarks/PortBenchmarks, Benchmarks/ServerBenchmarks)
// share: their configuration and threshold tolerances, the fixture holder of the set-up and
// tear-down hooks, and the round-trip benchmark.

import Benchmark

/// The micro benchmark suites' shared settings.
package enum MicroBenchmark {
    /// Every suite's default configuration: wall clock, allocations, retains and releases per
    /// sample of `scalingFactor` (1,000) operations, after three warm-up iterations.
    ///
    /// No `.instructions`: it needs a hardware PMU (perf_event_open), which this project's VM
    /// lacks, so it produced no samples; and asking for it makes the framework read /proc around
    /// every sample, which adds 16 mallocs per sample to mallocCountTotal. On a machine with
    /// counters, ask for it on the command line (README.md).
    package static var configuration: Benchmark.Configuration {
        .init(
            metrics: [.wallClock, .mallocCountTotal, .retainCount, .releaseCount, .throughput],
            warmupIterations: 3,
            scalingFactor: .kilo,
            maxDuration: .seconds(2),
            maxIterations: 1_000,
            thresholds: tolerances
        )
    }

    /// The tolerances `swift package benchmark thresholds check` applies to the p90 values stored in
    /// Thresholds/ (one sample = 1,000 operations):
    /// - retainCount, releaseCount: ±2% and ±50 per 1,000 operations: one more retain (or release)
    ///   per operation fails the check, and so does one fewer (record the better budget).
    /// - mallocCountTotal: ±10 per 1,000 operations (the budget is 0 in steady state). One more
    ///   allocation per operation (+1,000), or even one every 100 operations, fails the check; so
    ///   would fewer allocations than recorded (exit code 4, "better": record the new budget with
    ///   `thresholds update`).
    /// - wallClock: +300% (four times as slow). This 2-core VM is shared: a build running next to
    ///   the benchmarks made NopRoundTrip's p90 2.7 times as slow, so only gross slow-downs (a
    ///   sleep, a syscall or a lock convoy per operation) fail; an improvement never fails (a
    ///   relative difference cannot go below -100%).
    /// - throughput: not checked (it is 1 / wallClock).
    /// A metric without an entry here would be checked with no tolerance at all.
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

/// A fixture whose one operation is an echo round trip.
package protocol RoundTripFixture: AnyObject {
    func roundTrip() throws
    func close()
}

/// Registers a benchmark of `scaledIterations` round trips on a fixture made by `make` in the
/// set-up (outside the measurement) and closed in the tear-down.
package func roundTripBenchmark<F: RoundTripFixture>(_ name: String, make: @escaping @Sendable () throws -> F) {
    let fixture = Fixture<F>()
    Benchmark(name) { benchmark in
        let value = fixture.value!
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try value.roundTrip()
        }
        benchmark.stopMeasurement()
    } setup: {
        fixture.value = try make()
    } teardown: {
        fixture.take()?.close()
    }
}

/// Registers one ``roundTripBenchmark(_:make:)`` per message size, 128 bytes and 16 KiB, named
/// `prefix` followed by `128B` or `16KiB`; `make` gets the message size.
package func echoRoundTripBenchmarks<F: RoundTripFixture>(
    _ prefix: String, make: @escaping @Sendable (_ messageSize: Int) throws -> F
) {
    for (bytes, label) in [(128, "128B"), (16_384, "16KiB")] {
        roundTripBenchmark(prefix + label) { try make(bytes) }
    }
}

/// State a benchmark's setup hook builds, its closure uses and its teardown hook closes. The
/// framework runs the three one after the other, never at once.
package final class Fixture<Value>: @unchecked Sendable {
    // @unchecked: `value` is written by the setup and teardown hooks and read by the benchmark
    // closure, which the framework runs one after the other (never at once), each call
    // ordered after the previous one's return.
    package var value: Value?

    package init() {}

    package func take() -> Value? {
        defer { value = nil }
        return value
    }
}

/// A benchmark failed: the port or the server misbehaved (never thrown on the measured path
/// otherwise).
package struct BenchmarkFailure: Error, CustomStringConvertible {
    package let description: String

    package init(description: String) {
        self.description = description
    }
}
