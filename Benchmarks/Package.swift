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
//
// Build them in release from this directory (products land in Benchmarks/.build/release/).
// `swift build` honours only the last of several --product options, so one product per command:
//
//   swift build -c release --product nio-echo && swift build -c release --product nio-http

import PackageDescription

// SwiftNIO's core and POSIX event loops and ArgumentParser: what every target here imports.
let nioServerDependencies: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "ArgumentParser", package: "swift-argument-parser"),
]

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
    ],
    swiftLanguageModes: [.v6]
)
