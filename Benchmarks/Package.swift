// swift-tools-version: 6.1
//
// RingPortBenchmarks: RingPort's micro benchmarks, kept apart from the main package so that
// RingPort itself does not depend on the benchmark package. (The SwiftNIO baselines the servers
// are compared against are `ringport nio-echo` and `ringport nio-http` with --transport posix.)
//
// MicroBenchmarkSupport is what the micro benchmark suites below share.
//
// The micro benchmarks (ordo-one/benchmark) are laid out as swift-nio does:
// one executable target per suite under Benchmarks/<Suite>/, static thresholds under
// Thresholds/. The benchmark plugin runs every executable target whose directory is in
// Benchmarks/:
//
//   PortBenchmarks     the raw completion port: user post, NOP, echo round trips (README.md)
//   ServerBenchmarks   a TCPServer echo round trip through a ConnectionHandler
//   AsyncBenchmarks    an async echo round trip through a TCPConnection's inbound and outbound
//
//   swift package benchmark                    run them
//   swift package benchmark thresholds check   compare a run with Thresholds/ (exit 0: within)

import PackageDescription

// RingPort is the package in the parent directory. SwiftPM names a path dependency after its
// directory, so `package:` below must be that directory's name, whatever the checkout is called.
let ringPortPackage = String(Context.packageDirectory.split(separator: "/").dropLast().last ?? "RingPort")

// A micro benchmark suite: an executable target in Benchmarks/<name>/ run by the benchmark plugin,
// with the shared support and the given products of RingPort.
func microBenchmarkSuite(_ name: String, products: [String]) -> Target {
    .executableTarget(
        name: name,
        dependencies: ["MicroBenchmarkSupport", .product(name: "Benchmark", package: "benchmark")]
            + products.map { .product(name: $0, package: ringPortPackage) },
        path: "Benchmarks/\(name)",
        plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
    )
}

let package = Package(
    name: "RingPortBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        // Micro benchmarks. MallocInterposer (malloc counts on Swift 6.3+) only: the default
        // RuntimeInterposer trait pulls in swift-runtime-interposer, which only ARC metrics need.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(path: ".."),
    ],
    targets: [
        // What the micro benchmark suites share: configuration, tolerances, fixtures, round trips.
        .target(
            name: "MicroBenchmarkSupport",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "RingPort", package: ringPortPackage),
            ]
        ),
        // Micro benchmarks of the completion port itself (post, NOP, echo round trips).
        microBenchmarkSuite("PortBenchmarks", products: ["RingPort"]),
        // Micro benchmarks of the server path: a TCPServer echo round trip through a ConnectionHandler.
        microBenchmarkSuite("ServerBenchmarks", products: ["RingPort", "RingPortServer"]),
        // Micro benchmarks of the async layer: an echo round trip through a connection's task.
        microBenchmarkSuite("AsyncBenchmarks", products: ["RingPort", "RingPortAsync"]),
    ],
    swiftLanguageModes: [.v6]
)
