// nio-echo: a TCP echo server on SwiftNIO, the baseline for `ringport echo`.
//
//   nio-echo [--host 127.0.0.1] [--port 8888] [--threads 1]
//
// Runs until SIGINT or SIGTERM, then stops accepting, closes every connection and exits 0.

import ArgumentParser
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@main
struct NIOEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-echo",
        abstract: "A TCP echo server on SwiftNIO (baseline for `ringport echo`).",
        discussion: "Runs until SIGINT or SIGTERM, then closes every connection and exits."
    )

    @Option(help: "The address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "The port to listen on.")
    var port = 8888

    @Option(help: "The number of event loop threads.")
    var threads = 1

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        // Before any thread exists, so that every event loop thread inherits the blocked mask.
        let signals = TerminationSignals.block()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)

        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: Int32(SOMAXCONN))
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            // Lets EchoHandler finish echoing after the peer's FIN instead of closing at once.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(EchoHandler())
                }
            }

        let server: any Channel
        do {
            server = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        let address = server.localAddress.map { "\($0.ipAddress ?? host):\($0.port ?? port)" } ?? "\(host):\(port)"
        printToStandardError("nio-echo: listening on \(address) with \(threads) event loop thread(s)")

        let signal = signals.wait()
        printToStandardError("nio-echo: signal \(signal), shutting down")
        try? server.close().wait()
        try group.syncShutdownGracefully()
    }
}

/// Writes a line to standard error (unbuffered, so it reaches a log file even if the process is
/// killed later).
private func printToStandardError(_ message: String) {
    var line = message + "\n"
    line.withUTF8 { bytes in
        _ = write(STDERR_FILENO, bytes.baseAddress, bytes.count)
    }
}
