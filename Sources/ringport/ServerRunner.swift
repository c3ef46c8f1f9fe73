import ArgumentParser
import Glibc
import RingPort
import RingPortServer

/// Runs a server until SIGINT or SIGTERM, shuts it down gracefully, and forces the shutdown on a
/// second signal (``ServiceRunner``). Prints where it listens and, at the end, a one-line summary.
func runServer(
    options: ServerOptions, label: String, handler: some ConnectionHandler,
    configure: (inout TCPServer.Configuration) -> Void = { _ in }
) async throws {
    bootstrapLogging(level: options.listen.logLevel)
    var configuration = try options.serverConfiguration(label: label)
    configure(&configuration)

    let runner = await ServiceRunner()
    let server: TCPServer
    do {
        server = try TCPServer(configuration: configuration, handler: handler)
        try server.start()
    } catch {
        StandardError.write("error: \(error)")
        throw ExitCode.failure
    }
    let rings = configuration.port.ringCount
    print(
        """
        ringport \(label) listening on \(server.localAddress) (\(server.backend), \
        \(configuration.port.workerCount) workers, \(rings) \(rings == 1 ? "ring" : "rings"))
        """
    )
    fflush(nil)

    try await runner.run([server], logger: configuration.logger) { signal, first in
        print(
            first
                ? "received \(signal.name), shutting down (again to force)"
                : "received \(signal.name) again, closing every connection now")
        fflush(nil)
    }

    let statistics = server.statistics
    let port = server.portStatistics
    print(
        """
        stopped: \(server.backend) backend, \(statistics.accepted) connections served, \(statistics.refused) refused, \
        \(statistics.acceptErrors) accept errors, \(statistics.idleTimeouts) idle timeouts, \
        \(statistics.bytesReceived) bytes in, \(statistics.bytesSent) bytes out, \(port.completions) completions, \
        \(port.kernelEnters) \(server.backend == .epoll ? "epoll enters" : "io_uring_enter calls"), \
        \(port.leaderTakeovers) leader takeovers, \
        \(statistics.bufferExhaustions) buffer exhaustions, \(statistics.backpressurePauses) backpressure pauses, \
        \(port.staleCompletions + port.droppedCompletions) lost
        """)
}
