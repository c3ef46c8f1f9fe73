// swift-tools-version: 6.1
//
// RingPort: the I/O completion port programming model on io_uring.

import PackageDescription

let package = Package(
    name: "RingPort",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RingPort", targets: ["RingPort"]),
        .library(name: "RingPortServer", targets: ["RingPortServer"]),
        .library(name: "RingPortAsync", targets: ["RingPortAsync"]),
        .executable(name: "ringport", targets: ["ringport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // `make docs`: generates the DocC documentation of the library modules.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // liburing (Debian: liburing-dev), imported as a system library, plus the few
        // helpers Swift cannot import (macros, flag defines) as static inline shims.
        .systemLibrary(
            name: "CLiburing",
            pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]
        ),
        // The proactor: completion port, per-handle and per-I/O contexts, workers.
        .target(
            name: "RingPort",
            dependencies: [
                "CLiburing",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Servers built on the proactor.
        .target(
            name: "RingPortServer",
            dependencies: [
                "RingPort",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // async/await over the port: TCP listener and connections, a task executor on the
        // port's worker threads.
        .target(
            name: "RingPortAsync",
            dependencies: [
                "RingPort",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The command-line tool.
        .executableTarget(
            name: "ringport",
            dependencies: [
                "RingPort",
                "RingPortAsync",
                "RingPortServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Examples/: small programs on each layer, built with everything else (see Examples/README.md).
        .executableTarget(
            name: "RawEcho",
            dependencies: ["RingPort"],
            path: "Examples/RawEcho"
        ),
        .executableTarget(
            name: "AsyncEcho",
            dependencies: [
                "RingPort",
                "RingPortAsync",
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Examples/AsyncEcho"
        ),
        .executableTarget(
            name: "KeyValueServer",
            dependencies: [
                "RingPort",
                "RingPortServer",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/KeyValueServer"
        ),
        .testTarget(
            name: "RingPortTests",
            dependencies: [
                "RingPort",
                "RingPortAsync",
                "RingPortServer",
                "ringport",
                "RawEcho",
                "AsyncEcho",
                "KeyValueServer",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
