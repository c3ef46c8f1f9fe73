import ArgumentParser
import Logging
import RingPort

/// Options every server command shares: where to listen, the port's shape, logging.
struct ServerOptions: ParsableArguments {
    @Option(help: "The address to listen on (numeric IPv4 or IPv6, or localhost).")
    var host = "127.0.0.1"

    @Option(help: "The TCP port to listen on (0: let the kernel choose; the chosen port is printed).")
    var port: UInt16 = 8888

    @Option(help: "Worker threads (default: CPU count × 2 + 2).")
    var workers: Int?

    @Option(help: "io_uring instances; each connection lives on one (default: one per two CPUs).")
    var rings: Int?

    @Option(help: "Submission queue entries per ring (1...32768).")
    var ringEntries: UInt32 = 256

    @Option(help: "Completion queue entries per ring (default: max(4096, 2 × ring entries)).")
    var completionEntries: UInt32?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        if let workers, workers < 1 { throw ValidationError("--workers must be at least 1") }
        if let rings, rings < 1 { throw ValidationError("--rings must be at least 1") }
    }

    /// Sets up logging to standard error at the chosen level. Call once.
    func bootstrapLogging() {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }

    func portConfiguration(logger: Logger) -> CompletionPort.Configuration {
        var configuration = CompletionPort.Configuration()
        if let workers { configuration.workerCount = workers }
        if let rings { configuration.ringCount = rings }
        configuration.ringEntries = ringEntries
        configuration.completionQueueEntries = completionEntries
        configuration.logger = logger
        return configuration
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
