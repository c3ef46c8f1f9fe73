import ArgumentParser
import Logging
import RingPort
import RingPortServer

/// Options every command that serves on a completion port shares (`echo`, `http`, `async-echo`,
/// and `nio-echo` and `nio-http`, whose `--transport posix` uses only the address and the log
/// level): where to listen, what performs the I/O, the port's threads and rings, logging.
struct ListenOptions: ParsableArguments {
    @Option(help: "The address to listen on (numeric IPv4 or IPv6, or localhost).")
    var host = "127.0.0.1"

    @Option(help: "The TCP port to listen on (0: let the kernel choose; the chosen port is printed).")
    var port: UInt16 = 8888

    @Option(help: "What performs the I/O: auto (io_uring, or epoll where io_uring is refused), io_uring, or epoll.")
    var backend: CompletionPort.Backend = .automatic

    @Option(help: "Worker threads (default: CPU count × 2 + 2).")
    var workers: Int?

    @Option(help: "io_uring instances; each connection lives on one (default: one per two CPUs).")
    var rings: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        if let workers, workers < 1 { throw ValidationError("--workers must be at least 1") }
        if let rings, rings < 1 { throw ValidationError("--rings must be at least 1") }
    }

    /// The address to listen on; a host that is no address is a usage error.
    func address() throws -> SocketAddress {
        do {
            return try SocketAddress(host: host, port: port)
        } catch {
            throw ValidationError(error.description)
        }
    }

    /// Sets the port's backend, workers and rings (where given) and its logger.
    func configure(_ configuration: inout CompletionPort.Configuration) {
        configuration.backend = backend
        if let workers { configuration.workerCount = workers }
        if let rings { configuration.ringCount = rings }
        configuration.logger = Logger(label: "ringport.port")
    }
}

/// Sets up logging to standard error at `level`. Call once per process.
func bootstrapLogging(level: Logger.Level) {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}

/// Options every server command of the completion port's TCP server shares: where to listen and
/// the port's shape (``ListenOptions``), the ring, the limits.
struct ServerOptions: ParsableArguments {
    @OptionGroup var listen: ListenOptions

    @Option(help: "Submission queue entries per ring (1...32768).")
    var ringEntries: UInt32 = 256

    @Option(help: "Completion queue entries per ring (default: max(4096, 2 × ring entries)).")
    var completionEntries: UInt32?

    @Option(help: "Provided receive buffers per ring (a power of two); 0 disables multishot receive.")
    var bufferCount = 1024

    @Option(help: "Bytes per receive buffer (provided buffers, or the per-connection buffer without them).")
    var bufferSize = 16384

    @Option(help: "Connections open at once; more are closed as soon as they are accepted.")
    var maxConnections = 16384

    @Option(help: "Seconds without progress before a connection is closed (0: never).")
    var idleTimeout: Double = 60

    @Option(
        help: """
            Bytes per second a peer must read, over the idle timeout, while the server has bytes \
            for it; a slower one is closed at the idle timeout (0: any rate).
            """)
    var minimumSendRate = 240

    @Option(
        help: """
            Seconds a connection the handler closed lingers at most, reading and dropping what the \
            peer still sends so that its last response is not lost to a reset (0: close at once).
            """)
    var lingerTimeout: Double = 2

    @Option(help: "Bytes queued for sending per connection beyond which the server stops reading from it.")
    var maxWriteQueue = 1 << 20

    @Option(help: "Writes at least this large use a zero-copy send.")
    var zeroCopyThreshold = 64 * 1024

    @Option(help: "How to accept: auto (multishot where the kernel has it), multishot, or pool.")
    var accept: AcceptOption = .auto

    @Option(help: "Accepts kept posted with --accept pool.")
    var acceptDepth = 16

    @Option(
        help: """
            Completions a worker takes at a time: above 1, cheaper under load, but a handler that \
            blocks delays the rest of its batch (the echo and HTTP handlers never block).
            """)
    var completionBatch = 1

    @Option(help: "The listen(2) backlog.")
    var backlog: Int32 = 1024

    @Flag(help: "Set SO_REUSEPORT so that several servers can share the port.")
    var reusePort = false

    @Option(help: "Seconds a shutdown waits for connections to finish before closing them.")
    var gracePeriod: Double = 10

    enum AcceptOption: String, ExpressibleByArgument, CaseIterable {
        case auto, multishot, pool
    }

    func validate() throws {
        if bufferCount < 0 || (bufferCount > 0 && bufferCount & (bufferCount - 1) != 0) {
            throw ValidationError("--buffer-count must be 0 or a power of two")
        }
        if idleTimeout < 0 || gracePeriod < 0 || lingerTimeout < 0 {
            throw ValidationError("timeouts must not be negative")
        }
        if completionBatch < 1 { throw ValidationError("--completion-batch must be at least 1") }
        if minimumSendRate < 0 { throw ValidationError("--minimum-send-rate must not be negative") }
    }

    /// A timeout option in seconds: nil for 0 (none); otherwise at least a microsecond, so that
    /// a tiny value is not rounded to the zero the server refuses.
    private static func timeout(seconds: Double) -> Duration? {
        seconds > 0 ? .microseconds(max(1, Int64(seconds * 1_000_000))) : nil
    }

    /// The server configuration these options describe.
    func serverConfiguration(label: String) throws -> TCPServer.Configuration {
        var configuration = TCPServer.Configuration(address: try listen.address())
        listen.configure(&configuration.port)
        configuration.port.ringEntries = ringEntries
        configuration.port.completionQueueEntries = completionEntries
        configuration.port.providedBuffers = bufferCount > 0 ? .init(count: bufferCount, size: bufferSize) : nil
        configuration.receiveBufferSize = bufferSize
        configuration.maximumConnections = maxConnections
        configuration.idleTimeout = Self.timeout(seconds: idleTimeout)
        configuration.minimumSendRate = minimumSendRate > 0 ? minimumSendRate : nil
        configuration.lingeringCloseTimeout = Self.timeout(seconds: lingerTimeout)
        configuration.maximumQueuedWriteBytes = maxWriteQueue
        configuration.zeroCopyThreshold = zeroCopyThreshold
        configuration.completionBatch = completionBatch
        configuration.listener.backlog = backlog
        configuration.listener.reusePort = reusePort
        switch accept {
        case .auto: configuration.acceptStrategy = .automatic
        case .multishot: configuration.acceptStrategy = .multishot
        case .pool: configuration.acceptStrategy = .pool(depth: acceptDepth)
        }
        configuration.gracefulShutdownPeriod = .milliseconds(Int64(gracePeriod * 1000))
        configuration.label = label
        configuration.logger = Logger(label: "ringport.\(label)")
        return configuration
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

extension CompletionPort.Backend: ExpressibleByArgument {}
