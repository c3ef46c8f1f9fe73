import Glibc
import Logging
import RingPort
import Synchronization

/// A TCP server on a `CompletionPort`: accepts connections, reads from them, and hands the
/// bytes to a ``ConnectionHandler``, with the limits a server on the internet needs.
///
/// - **Accepting.** A multishot accept where the kernel has it (Linux 5.19+), else a pool of
///   pre-posted accepts (the `AcceptEx` pattern), chosen by the port's `features`. New
///   connections are spread over the port's rings. Beyond ``Configuration/maximumConnections``
///   a new connection is closed at once and counted as refused. When accepting fails
///   (`EMFILE`, `ENFILE`, ...) the server logs once, backs off (10 ms doubling to 1 s), and keeps
///   serving the connections it has.
/// - **Receiving.** A multishot receive into the ring's provided buffers where the kernel has
///   both (Linux 6.0+): an idle connection holds no receive buffer. Else a plain receive into a
///   per-connection buffer.
/// - **Writing, backpressure, idle timeout.** See ``Connection``.
/// - **Shutdown.** ``shutdown(gracePeriod:)`` stops accepting, lets connections send what they
///   have queued and answer what they received, closes them, waits for every completion, and
///   stops; ``forceShutdown()`` cuts the grace period short.
///
/// Thread-safety: all methods may be called from any thread except the handler's callbacks
/// (``shutdown(gracePeriod:)`` waits for the workers).
public final class TCPServer: Sendable {
    /// How to run the server. Every limit has a default safe for a public server.
    public struct Configuration: Sendable {
        /// Where to listen (IPv4 or IPv6). Port 0 lets the kernel choose (see ``TCPServer/localAddress``).
        public var address: SocketAddress
        /// Backlog, `SO_REUSEADDR`, `SO_REUSEPORT`.
        public var listener = TCPSocket.ListenerOptions()
        /// The completion port: rings, ring sizes, worker count, provided buffers (default:
        /// 1024 buffers of 16 KiB per ring), logger.
        public var port = CompletionPort.Configuration()
        /// Connections open at once; more are closed as soon as they are accepted.
        public var maximumConnections = 16384
        /// Close a connection that made no progress for this long (nil: never; otherwise positive).
        public var idleTimeout: Duration? = .seconds(60)
        /// Whether received bytes count as progress for the idle timeout. A framed protocol sets
        /// this to false and calls ``Connection/markProgress()`` per complete request, so that a
        /// client trickling one byte at a time (slowloris) is closed.
        public var idleTimeoutCountsReceivedBytes = true
        /// The slowest a peer may read what the connection has to send, in bytes per second
        /// over the idle timeout (nil: any rate). Once bytes wait to be sent, the connection
        /// makes progress for the idle timeout when its write queue empties, or each time
        /// `minimumSendRate` × ``idleTimeout`` bytes have been sent since the bytes began to wait
        /// or since the last progress; sends in between do not count. A peer that reads at least
        /// at this rate is never cut. One that reads slower (a slow-read attack: a few bytes
        /// every few seconds, each letting a send complete, which used to count as progress) is
        /// closed at the idle timeout, and counted as one.
        ///
        /// 240 bytes per second by default (the minimum response rate of ASP.NET Core's server):
        /// 14,400 bytes a minute with the default idle timeout. With
        /// ``idleTimeoutCountsReceivedBytes``, bytes the peer sends count as progress too: a slow
        /// reader that keeps sending stays open until its queue passes
        /// ``maximumQueuedWriteBytes`` and the server stops reading from it. Positive when set.
        public var minimumSendRate: Int? = 240
        /// How long a connection the handler closed (``Connection/close()``) lingers at most: its
        /// write side shut down once everything is sent, it reads and drops what the peer still
        /// sends until the peer closes its side (nil: the descriptor closes as soon as everything
        /// is sent; otherwise positive).
        ///
        /// Closing a socket with bytes unread, or before the peer's last bytes arrive, makes the
        /// kernel answer with a reset, and a reset can destroy the response the peer has not read
        /// yet: an HTTP client still uploading a body the server refused would see "connection
        /// reset" instead of the 413. The timeout bounds what a peer that keeps sending can hold.
        public var lingeringCloseTimeout: Duration? = .seconds(2)
        /// Bytes queued for sending per connection beyond which the server stops reading from it.
        /// What the receive delivers before it stops (at most the socket's receive buffer) is
        /// still queued, so the queue may pass this by that much.
        public var maximumQueuedWriteBytes = 1 << 20
        /// Writes of an application context at least this large use a zero-copy send.
        public var zeroCopyThreshold = 64 * 1024
        /// The per-connection receive buffer when provided buffers are unavailable.
        public var receiveBufferSize = 16384
        /// The size of the pooled buffers that written bytes are copied into.
        public var writeChunkSize = 16384
        /// How to accept. `.automatic` picks multishot where the kernel has it.
        public var acceptStrategy = AcceptStrategy.automatic
        /// How many completions a worker takes from its ring at a time (default 1).
        ///
        /// Above 1, a worker takes up to this many in one pass through the ring's lock and runs
        /// their handler calls one after another, which costs less per message when many
        /// connections are busy (``ConnectionHandler`` calls stay serialised per connection).
        /// The price: the connections of a batch wait until the calls before theirs return, and
        /// a standby that takes the ring over from a worker blocked in a handler cannot reach
        /// them. Set it only for handlers that never block (`EchoHandler`, say); with 1, a
        /// blocking handler delays its own connection only (and keeps the provided buffers its
        /// worker released before it blocked out of its ring until it returns).
        public var completionBatch = 1
        /// The grace period of the graceful shutdown that ``TCPServer/run()`` performs when its
        /// service group shuts down gracefully (see ``TCPServer/shutdown(gracePeriod:)``).
        public var gracefulShutdownPeriod: Duration = .seconds(10)
        /// How long a shutdown waits, once the grace period is over and the rest was closed, for
        /// the last completions before it stops the workers. A handler that keeps its worker busy
        /// longer delays the stop until it returns; what its worker held is then handled on the
        /// stopping thread.
        public var shutdownTimeout: Duration = .seconds(10)
        /// A label for logs and metrics (the `server` dimension).
        public var label = "server"
        /// Where the server logs.
        public var logger = Logger(label: "ringport.server")

        /// A configuration listening on `address`, with the defaults for the rest.
        public init(address: SocketAddress) {
            self.address = address
            port.providedBuffers = .init(count: 1024, size: 16384)
        }
    }

    /// How the server accepts connections.
    public enum AcceptStrategy: Hashable, Sendable {
        /// Multishot accept where the kernel has it, else a pool of 16 accepts.
        case automatic
        /// One multishot accept (Linux 5.19+).
        case multishot
        /// `depth` pre-posted single accepts, re-posted as they complete.
        case pool(depth: Int)
    }

    /// Counters of a running server.
    public struct Statistics: Hashable, Sendable {
        /// Connections accepted since start.
        public var accepted = 0
        /// Connections closed at once because ``Configuration/maximumConnections`` were open.
        public var refused = 0
        /// Connections open now.
        public var open = 0
        /// Connections closed since start.
        public var closed = 0
        /// Bytes received and sent.
        public var bytesReceived = 0
        /// See ``bytesReceived``.
        public var bytesSent = 0
        /// Connections closed by the idle timeout.
        public var idleTimeouts = 0
        /// Failed accepts (`EMFILE`, `ENFILE`, ...).
        public var acceptErrors = 0
        /// Connections that failed (reset, broken pipe, ...).
        public var connectionErrors = 0
        /// Requests a protocol handler rejected (malformed, too large).
        public var protocolErrors = 0
        /// Times a connection stopped reading because its write queue was full.
        public var backpressurePauses = 0
        /// Times a receive found every provided buffer in use (`ENOBUFS`).
        public var bufferExhaustions = 0
    }

    /// The configuration the server was created with.
    public let configuration: Configuration
    /// The address the listener is bound to.
    public let localAddress: SocketAddress
    /// What the port's backend offers (`CompletionPort.features`): the kernel's io_uring
    /// features, or none of them on the epoll backend.
    public let features: IOURingFeatures
    private let core: ServerCore
    private let workers: WorkerPool
    /// Signalled when a shutdown has finished (what ``run()`` waits for).
    let stopped = OneShotEvent()

    /// Probes the kernel, sets up the completion port and binds the listener. Nothing is accepted
    /// before ``start()``.
    ///
    /// - Throws: `RingPortError`: io_uring unavailable (with the cause and the fix), a socket
    ///   call failed (e.g. `EADDRINUSE`), or an invalid configuration.
    public init(configuration: Configuration, handler: some ConnectionHandler) throws(RingPortError) {
        guard configuration.maximumConnections > 0, configuration.maximumQueuedWriteBytes > 0,
            configuration.receiveBufferSize > 0, configuration.writeChunkSize > 0, configuration.completionBatch > 0
        else {
            throw RingPortError(.invalidArgument, operation: "TCPServer limits and sizes must be positive")
        }
        if case .pool(let depth) = configuration.acceptStrategy, depth < 1 {
            throw RingPortError(.invalidArgument, operation: "accept pool depth \(depth)")
        }
        if let idleTimeout = configuration.idleTimeout, idleTimeout <= .zero {
            // Zero would close every connection at the first sweep: nil is "never".
            throw RingPortError(.invalidArgument, operation: "idle timeout \(idleTimeout) (nil disables it)")
        }
        if let rate = configuration.minimumSendRate, rate <= 0 {
            throw RingPortError(.invalidArgument, operation: "minimum send rate \(rate) (nil disables it)")
        }
        if let linger = configuration.lingeringCloseTimeout, linger <= .zero {
            throw RingPortError(
                .invalidArgument, operation: "lingering close timeout \(linger) (nil disables lingering)")
        }
        self.configuration = configuration
        let port = try CompletionPort(configuration: configuration.port)
        features = port.features
        if case .multishot = configuration.acceptStrategy, !features.multishotAccept {
            port.close()
            throw RingPortError(
                .invalidArgument,
                operation: """
                    acceptStrategy .multishot: the port's \(port.backend) backend has no multishot accept \
                    (io_uring on Linux 5.19+); use .automatic or .pool
                    """)
        }
        let listenerDescriptor: Int32
        do {
            listenerDescriptor = try TCPSocket.makeListener(
                address: configuration.address, options: configuration.listener)
        } catch {
            port.close()
            throw error
        }
        let listener: IOHandle
        do {
            localAddress = try TCPSocket.localAddress(of: listenerDescriptor)
            listener = try port.associate(descriptor: listenerDescriptor)
        } catch {
            SystemCall.close(listenerDescriptor)
            port.close()
            throw error
        }
        let core = ServerCore(
            port: port, listener: listener, configuration: configuration, features: features, handler: handler)
        self.core = core
        let name = "ringport-\(configuration.label)"
        if configuration.completionBatch > 1 {
            workers = WorkerPool(port: port, name: name, maximumBatch: configuration.completionBatch) { batch in
                core.handle(batch)
            }
        } else {
            workers = WorkerPool(port: port, name: name) { completion in
                core.handle(completion)
            }
        }
    }

    /// Starts the workers, the accepts and the idle sweep. (As a service, ``run()`` does this.)
    ///
    /// - Throws: `RingPortError` when the server cannot start (a worker thread or the first
    ///   accept refused): the server is shut down, its port closed, before the error is thrown;
    ///   `RingPortError.Code.invalidArgument` when it was started or shut down before.
    public func start() throws(RingPortError) {
        let started: Bool
        do {
            started = try startIfIdle()
        } catch {
            // Half started (some threads, no accept): nothing of it may outlive the error.
            shutdown(gracePeriod: .zero)
            throw error
        }
        guard started else {
            throw RingPortError(.invalidArgument, operation: "TCPServer.start: a server starts once")
        }
    }

    /// Starts the server as ``start()`` does if it was neither started nor shut down before;
    /// returns whether it did.
    func startIfIdle() throws(RingPortError) -> Bool {
        guard core.transition(from: .idle, to: .running) else { return false }
        try workers.start()
        try core.startAccepting()
        try core.startSweeping()
        configuration.logger.info(
            """
            \(configuration.label) listening on \(localAddress): \(core.port.backend) backend, \
            \(workers.threadCount) workers, \(core.port.ringCount) ring(s), \(core.acceptDescription), \
            \(core.receiveDescription)
            """
        )
        return true
    }

    /// Stops the server gracefully: stops accepting; asks every connection to finish (answer what
    /// it received, send what is queued, then close); after `gracePeriod` (or
    /// ``forceShutdown()``) closes the rest; waits for every completion (up to
    /// ``Configuration/shutdownTimeout``); stops the workers; handles on the calling thread what
    /// a worker busy past that timeout left (its connection's last callbacks run there); and
    /// closes the port. Idempotent; returns at once if another call is shutting down.
    public func shutdown(gracePeriod: Duration = .seconds(10)) {
        let wasRunning = core.transition(from: .running, to: .draining)
        guard wasRunning || core.transition(from: .idle, to: .draining) else { return }
        if wasRunning {
            core.drain(gracePeriod: gracePeriod)
        }
        workers.shutdown()
        // What a handler still busy after the drain held until its worker stopped: handled
        // here, so that its connection closes instead of being dropped with the port.
        workers.handleRemaining(for: .seconds(1))
        core.port.close()
        core.finish()
        stopped.signal()
    }

    /// Cuts a running ``shutdown(gracePeriod:)``'s grace period short: every connection is
    /// closed at once (what is queued is dropped).
    public func forceShutdown() {
        core.forceRequested.store(true, ordering: .releasing)
    }

    /// A snapshot of the server's counters.
    public var statistics: Statistics {
        core.resources.counters.snapshot()
    }

    /// The completion port's counters.
    public var portStatistics: CompletionPort.Statistics {
        core.port.statistics
    }

    /// The backend that serves (`CompletionPort.backend`): io_uring, or epoll where io_uring was
    /// refused.
    public var backend: CompletionPort.Backend {
        core.port.backend
    }
}
