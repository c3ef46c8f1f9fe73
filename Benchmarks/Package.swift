// swift-tools-version: 6.1
//
// RingPortBenchmarks: baselines and benchmarks for RingPort, kept apart from the main package so
// that RingPort itself does not depend on SwiftNIO.
//
// For now it holds two SwiftNIO servers, the baselines RingPort's servers are compared against
// (Benchmarks/scripts/compare-echo.sh and compare-http.sh):
//
//   nio-echo   a TCP echo server
//   nio-http   an HTTP/1.1 plaintext server answering the same bytes as `ringport http`
//
// and BenchmarkSupport, the library with what the two share (options, start-up and shut-down).
// MicroBenchmarkSupport is what the micro benchmark suites below share.
//
// Build them in release from this directory (products land in Benchmarks/.build/release/).
// `swift build` honours only the last of several --product options, so one product per command:
//
//   swift build -c release --product nio-echo && swift build -c release --product nio-http
//
// It also holds RingPort's micro benchmarks (ordo-one/benchmark), laid out as swift-nio does:
// one executable target per suite under Benchmarks/<Suite>/, static thresholds under
// Thresholds/. The benchmark plugin runs every executable target whose directory is in
// Benchmarks/ (the NIO servers live in Sources/ and are not benchmarks):
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

// SwiftNIO's core and POSIX event loops and ArgumentParser: what every target here imports.
let nioServerDependencies: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "ArgumentParser", package: "swift-argument-parser"),
]

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
    products: [
        .executable(name: "nio-echo", targets: ["nio-echo"]),
        .executable(name: "nio-http", targets: ["nio-http"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // Micro benchmarks. MallocInterposer (malloc counts on Swift 6.3+) only: the default
        // RuntimeInterposer trait pulls in swift-runtime-interposer, which only ARC metrics need.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(path: ".."),
    ],
    targets: [
        // What both servers share: --host/--port/--threads, and binding, serving until SIGINT or
        // SIGTERM and shutting down gracefully.
        .target(name: "BenchmarkSupport", dependencies: nioServerDependencies),
        // SwiftNIO TCP echo server (baseline for `ringport echo`).
        .executableTarget(name: "nio-echo", dependencies: ["BenchmarkSupport"] + nioServerDependencies),
        // SwiftNIO HTTP/1.1 plaintext server (baseline for `ringport http`).
        .executableTarget(
            name: "nio-http",
            dependencies: ["BenchmarkSupport", .product(name: "NIOHTTP1", package: "swift-nio")] + nioServerDependencies
        ),
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
