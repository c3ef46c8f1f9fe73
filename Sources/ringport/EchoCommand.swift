import ArgumentParser
import Logging
import RingPort
import RingPortServer

#if canImport(Glibc)
import Glibc
#endif

struct EchoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echo",
        abstract: "Run the echo server: every byte a client sends comes back.",
        discussion: "Runs until SIGINT or SIGTERM, then closes every connection and exits; a second signal exits at once."
    )

    @OptionGroup var server: ServerOptions

    @Option(help: "Bytes of each connection's receive buffer.")
    var bufferSize = 4096

    @Option(help: "Accepts kept posted on the listening socket.")
    var acceptDepth = 16

    func run() throws {
        server.bootstrapLogging()
        let logger = Logger(label: "ringport.echo")
        let signals = ShutdownSignals()

        let address: SocketAddress
        do {
            address = try SocketAddress(host: server.host, port: server.port)
        } catch {
            throw ValidationError(error.description)
        }
        var configuration = EchoServer.Configuration(address: address)
        configuration.port = server.portConfiguration(logger: Logger(label: "ringport.port"))
        configuration.bufferSize = bufferSize
        configuration.acceptDepth = acceptDepth
        configuration.logger = logger

        let echo: EchoServer
        do {
            echo = try EchoServer(configuration: configuration)
            try echo.start()
        } catch {
            printError(error)
            throw ExitCode.failure
        }
        let workerCount = configuration.port.workerCount
        let rings = configuration.port.ringCount
        print("ringport echo listening on \(echo.localAddress) (\(workerCount) workers, \(rings) \(rings == 1 ? "ring" : "rings"))")
        print("try: nc \(echo.localAddress.family == .ipv4 ? server.host : "-6 \(server.host)") \(echo.localAddress.port)")
        fflush(nil)

        let signal = signals.wait()
        print("received \(signal == SIGINT ? "SIGINT" : "SIGTERM"), shutting down")
        fflush(nil)
        signals.exitOnNextSignal()
        echo.shutdown()
        let statistics = echo.statistics
        let portStatistics = echo.portStatistics
        print(
            "stopped: \(statistics.accepted) connections served, \(portStatistics.completedOperations) completions,"
                + " \(portStatistics.kernelEnters) io_uring_enter calls, \(portStatistics.leaderTakeovers) leader takeovers,"
                + " \(portStatistics.staleCompletions + portStatistics.droppedCompletions) lost")
    }
}

/// Prints an error (RingPort's name the cause and the fix) to standard error.
func printError(_ error: any Error) {
    let text = "error: \(error)\n"
    _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
}
