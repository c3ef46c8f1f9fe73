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
        .library(name: "RingPortHTTP", targets: ["RingPortHTTP"]),
        .library(name: "RingPortAsync", targets: ["RingPortAsync"]),
        .library(name: "RingPortNIO", targets: ["RingPortNIO"]),
        .executable(name: "ringport", targets: ["ringport"]),
    ],
    traits: [
        // TLS for `ringport nio-echo` (NIOSSL, which builds BoringSSL: about 2 more minutes per
        // build on two cores). On by default; the AddressSanitizer build of `make sanitize`
        // leaves it out. The libraries do not use it.
        .trait(name: "TLS", description: "TLS through NIOSSL for ringport nio-echo and its tests"),
        .default(enabledTraits: ["TLS"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
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
        // The calling thread's pool worker as a C thread-local (Swift has none of its own), and
        // the address of the task it runs.
        .target(name: "CRingPortThread"),
        // The proactor: completion port, per-handle and per-I/O contexts, workers.
        .target(
            name: "RingPort",
            dependencies: [
                "CLiburing",
                "CRingPortThread",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Servers built on the proactor: TCPServer, Connection, ConnectionHandler.
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
        // HTTP/1.1 on the server: the request parser and the plaintext responder (a protocol
        // beside the transport, as NIOHTTP1 is beside NIOCore).
        .target(
            name: "RingPortHTTP",
            dependencies: ["RingPort", "RingPortServer"]
        ),
        // async/await over the port: TCP listener and connections, a task executor on the
        // port's worker threads. Bytes travel as NIOCore's ByteBuffer (NIOCore only: no event
        // loops, no sockets of SwiftNIO's).
        .target(
            name: "RingPortAsync",
            dependencies: [
                "CRingPortThread",
                "RingPort",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // SwiftNIO channels on the port: an EventLoopGroup whose loops are the port's rings,
        // socket channels and bootstraps (NIOCore only: none of NIOPosix).
        .target(
            name: "RingPortNIO",
            dependencies: [
                "CLiburing",
                "RingPort",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The echo load generator behind `ringport load` (package access: used by the tool).
        .target(
            name: "RingPortLoad",
            dependencies: [
                "RingPort",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The command-line tool: the servers (run by a ServiceGroup), the load generator, the probe.
        .executableTarget(
            name: "ringport",
            dependencies: [
                "RingPort",
                "RingPortAsync",
                "RingPortHTTP",
                "RingPortLoad",
                "RingPortNIO",
                "RingPortServer",
                // nio-echo and nio-http run the same pipeline on RingPortNIO or on NIOPosix.
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl", condition: .when(traits: ["TLS"])),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
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

        // Tests: one target per library module, in-process, on real sockets over loopback; and
        // IntegrationTests, the only target that depends on executables (it starts the CLI and
        // the examples as processes: command line, load generator, examples, stress).
        // RingPortTestSupport holds what several of them share (clients, polling, seeds).
        .target(
            name: "RingPortTestSupport",
            dependencies: ["RingPort", "RingPortServer"],
            path: "Tests/RingPortTestSupport"
        ),
        .testTarget(
            name: "RingPortTests",
            dependencies: [
                "RingPort", "RingPortTestSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .testTarget(
            name: "RingPortServerTests",
            dependencies: [
                "RingPort", "RingPortServer", "RingPortTestSupport",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .testTarget(
            name: "RingPortHTTPTests",
            dependencies: ["RingPort", "RingPortServer", "RingPortHTTP", "RingPortTestSupport"]
        ),
        .testTarget(
            name: "RingPortAsyncTests",
            dependencies: [
                "RingPort", "RingPortAsync", "RingPortLoad", "RingPortTestSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .testTarget(
            name: "RingPortNIOTests",
            dependencies: [
                "RingPort", "RingPortNIO", "RingPortTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl", condition: .when(traits: ["TLS"])),
            ]
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "RingPort",
                "RingPortAsync",
                "RingPortServer",
                "RingPortTestSupport",
                "ringport",
                "RawEcho",
                "AsyncEcho",
                "KeyValueServer",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
