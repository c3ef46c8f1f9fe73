// What the SwiftNIO baseline servers (nio-echo, nio-http) share: their listening options and
// their life cycle: bind, serve until SIGINT or SIGTERM, then stop accepting, close every
// connection and return.

import ArgumentParser
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `--host`, `--port` and `--threads`, for a command's `@OptionGroup`.
public struct ServerOptions: ParsableArguments {
    @Option(help: "The address to listen on.")
    public var host = "127.0.0.1"

    @Option(help: "The port to listen on.")
    public var port = 8888

    @Option(help: "The number of event loop threads.")
    public var threads = 1

    public init() {}

    public func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    /// Runs a server on `threads` event loop threads, listening on `host`:`port`, until SIGINT or
    /// SIGTERM; then closes the listening socket, shuts the event loop group down gracefully
    /// (which closes every connection) and returns.
    ///
    /// The server bootstrap comes with the listening socket's backlog (`SOMAXCONN`),
    /// `SO_REUSEADDR` and, on every connection, `TCP_NODELAY`; `configure` adds the rest (child
    /// channel options, the channel initializer) and may use the group, e.g. to set up state on
    /// each event loop. If it throws, or binding fails, the group is shut down and the error
    /// rethrown. `name` prefixes the lines written to standard error: where the server listens,
    /// and the signal that stopped it.
    public func runServer(
        name: String,
        configure: (ServerBootstrap, MultiThreadedEventLoopGroup) throws -> ServerBootstrap
    ) throws {
        // Before any thread exists, so that every event loop thread inherits the blocked mask.
        let signals = TerminationSignals.block()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)

        let server: any Channel
        do {
            let bootstrap = ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: Int32(SOMAXCONN))
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            server = try configure(bootstrap, group).bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        let address = server.localAddress.map { "\($0.ipAddress ?? host):\($0.port ?? port)" } ?? "\(host):\(port)"
        printToStandardError("\(name): listening on \(address) with \(threads) event loop thread(s)")

        let signal = signals.wait()
        printToStandardError("\(name): signal \(signal), shutting down")
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
