import ArgumentParser
import RingPort
import RingPortServer

#if canImport(Glibc)
import Glibc
#endif

/// Runs a server until SIGINT or SIGTERM, shuts it down gracefully, and forces the shutdown on a
/// second signal. Prints where it listens and, at the end, a one-line summary.
func runServer(options: ServerOptions, label: String, handler: some ConnectionHandler, configure: (inout TCPServer.Configuration) -> Void = { _ in }) throws {
    options.bootstrapLogging()
    // Before any thread starts, so that every thread inherits the blocked signals.
    let signals = ShutdownSignals()
    var configuration = try options.serverConfiguration(label: label)
    configure(&configuration)

    let server: TCPServer
    do {
        server = try TCPServer(configuration: configuration, handler: handler)
        try server.start()
    } catch {
        printError(error)
        throw ExitCode.failure
    }
    let rings = configuration.port.ringCount
    print("ringport \(label) listening on \(server.localAddress) (\(configuration.port.workerCount) workers, \(rings) \(rings == 1 ? "ring" : "rings"))")
    fflush(nil)

    let signal = signals.wait()
    print("received \(signal == SIGINT ? "SIGINT" : "SIGTERM"), shutting down (again to force)")
    fflush(nil)
    signals.onNextSignal { server.forceShutdown() }
    server.shutdown(gracePeriod: .milliseconds(Int64(options.gracePeriod * 1000)))

    let statistics = server.statistics
    let port = server.portStatistics
    print(
        "stopped: \(statistics.accepted) connections served, \(statistics.refused) refused, \(statistics.acceptErrors) accept errors,"
            + " \(statistics.idleTimeouts) idle timeouts, \(statistics.bytesReceived) bytes in,"
            + " \(statistics.bytesSent) bytes out, \(port.completions) completions, \(port.kernelEnters) io_uring_enter calls,"
            + " \(port.leaderTakeovers) leader takeovers, \(statistics.bufferExhaustions) buffer exhaustions, \(statistics.backpressurePauses) backpressure pauses,"
            + " \(port.staleCompletions + port.droppedCompletions) lost")
}

/// Prints an error (RingPort's name the cause and the fix) to standard error.
func printError(_ error: any Error) {
    let text = "error: \(error)\n"
    _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
}
