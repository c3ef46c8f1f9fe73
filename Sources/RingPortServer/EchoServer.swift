import Logging
import RingPort
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The echo server of the completion-port model, on a ``CompletionPort``.
///
/// Accepts are pre-posted (`AcceptEx` style). Each accepted socket is associated with the port
/// and gets one per-I/O context: a read is posted into its buffer; when it completes the same
/// bytes are written back (short sends are finished), then the next read is posted. 0 bytes
/// means the peer closed, an error means the connection failed: either way the handle is closed
/// and the context goes back to the pool.
///
/// Thread-safety: ``start()`` and ``shutdown(timeout:)`` may be called from any thread (not from
/// the server's own workers); ``statistics`` and ``localAddress`` anywhere.
public final class EchoServer: Sendable {
    /// How to run the server.
    public struct Configuration: Sendable {
        /// Where to listen. Port 0 lets the kernel choose (see ``EchoServer/localAddress``).
        public var address: SocketAddress
        /// The completion port's configuration (rings, ring sizes, worker count, logger).
        public var port = CompletionPort.Configuration()
        /// Listener options (backlog, SO_REUSEADDR, SO_REUSEPORT).
        public var listener = TCPSocket.ListenerOptions()
        /// Bytes of each connection's receive buffer.
        public var bufferSize = 4096
        /// Accepts kept posted on the listener.
        public var acceptDepth = 16
        /// Where the server logs.
        public var logger = Logger(label: "ringport.echo")

        /// A configuration listening on `address`, with the defaults for the rest.
        public init(address: SocketAddress) {
            self.address = address
        }
    }

    /// Counters of a running server.
    public struct Statistics: Hashable, Sendable {
        /// Connections accepted since start.
        public var accepted = 0
        /// Connections open now.
        public var open = 0
        /// Connections closed because the peer closed, reset, or an operation failed.
        public var closed = 0
        /// Accepts that failed (e.g. `EMFILE`), each followed by a short back-off.
        public var acceptErrors = 0
    }

    /// The configuration the server was created with.
    public let configuration: Configuration
    /// The address the listener is bound to.
    public let localAddress: SocketAddress
    private let port: CompletionPort
    private let handler: EchoHandler
    private let workers: WorkerPool
    private let logger: Logger

    /// Binds the listener and sets up the completion port. Nothing is accepted before ``start()``.
    ///
    /// - Throws: ``RingPortError``: io_uring unavailable (with cause and fix), or a socket call
    ///   failed (e.g. `EADDRINUSE` from `bind`).
    public init(configuration: Configuration) throws(RingPortError) {
        guard configuration.bufferSize > 0, configuration.acceptDepth > 0 else {
            throw RingPortError(.invalidArgument, operation: "bufferSize and acceptDepth must be positive")
        }
        self.configuration = configuration
        logger = configuration.logger
        port = try CompletionPort(configuration: configuration.port)
        let listenerDescriptor: Int32
        do {
            listenerDescriptor = try TCPSocket.makeListener(address: configuration.address, options: configuration.listener)
        } catch {
            port.close()
            throw error
        }
        let listener: IOHandle
        do {
            localAddress = try TCPSocket.localAddress(of: listenerDescriptor)
            listener = try port.associate(descriptor: listenerDescriptor)
        } catch {
            Glibc.close(listenerDescriptor)
            port.close()
            throw error
        }
        let handler = EchoHandler(
            port: port, listener: listener, bufferSize: configuration.bufferSize, logger: configuration.logger)
        self.handler = handler
        workers = WorkerPool(port: port, name: "ringport-echo") { completion in
            handler.handle(completion)
        }
    }

    /// Starts the workers and posts the accepts.
    public func start() throws(RingPortError) {
        guard handler.transition(from: .idle, to: .running) else {
            throw RingPortError(.invalidArgument, operation: "EchoServer.start: already started")
        }
        try workers.start()
        for _ in 0..<configuration.acceptDepth {
            try handler.postFirstAccept()
        }
        logger.info("echo server listening on \(localAddress) with \(workers.threadCount) workers on \(port.ringCount) \(port.ringCount == 1 ? "ring" : "rings")")
    }

    /// Stops the server: stops accepting, closes every connection (cancelling its operations),
    /// waits up to `timeout` for every completion to come back, stops the workers, and closes the
    /// port. Idempotent; a second concurrent call returns at once.
    public func shutdown(timeout: Duration = .seconds(5)) {
        let wasRunning = handler.transition(from: .running, to: .stopping)
        guard wasRunning || handler.transition(from: .idle, to: .stopping) else { return }
        port.closeAllHandles()
        // The workers handle the cancelled completions: contexts go back to their pools.
        let deadline = ContinuousClock.now + timeout
        while wasRunning && ContinuousClock.now < deadline && !handler.isDrained {
            usleep(1_000)
        }
        let remaining = statistics
        if remaining.open > 0 {
            logger.warning("echo server: \(remaining.open) connections still open at the shutdown deadline")
        }
        workers.shutdown()
        port.close()
        _ = handler.transition(from: .stopping, to: .stopped)
        logger.info("echo server stopped: \(remaining.accepted) connections accepted, \(remaining.closed) closed")
    }

    /// A snapshot of the server's counters.
    public var statistics: Statistics {
        handler.statistics
    }

    /// The completion port's counters.
    public var portStatistics: CompletionPort.Statistics {
        port.statistics
    }
}

/// The echo server's completion handling, run on the port's worker threads.
///
/// Thread-safety: ``handle(_:)`` runs on any worker; the port serialises the completions of one
/// connection. Counters and the state are atomics; the context pools are thread-safe.
private final class EchoHandler: Sendable {
    enum State: UInt8, AtomicRepresentable {
        case idle, running, stopping, stopped
    }

    private let port: CompletionPort
    private let listener: IOHandle
    private let contexts: ContextPool
    private let acceptContexts = ContextPool(bufferSize: 0)
    private let logger: Logger
    private let state = Atomic<State>(.idle)
    private let accepted = Atomic<Int>(0)
    private let closed = Atomic<Int>(0)
    private let acceptErrors = Atomic<Int>(0)
    private let outstandingAccepts = Atomic<Int>(0)

    init(port: CompletionPort, listener: IOHandle, bufferSize: Int, logger: Logger) {
        self.port = port
        self.listener = listener
        self.logger = logger
        contexts = ContextPool(bufferSize: bufferSize)
    }

    func transition(from old: State, to new: State) -> Bool {
        state.compareExchange(expected: old, desired: new, ordering: .acquiringAndReleasing).exchanged
    }

    /// No connection is open and no accept is outstanding.
    var isDrained: Bool {
        statistics.open == 0 && outstandingAccepts.load(ordering: .acquiring) == 0
    }

    var statistics: EchoServer.Statistics {
        let accepted = accepted.load(ordering: .relaxed)
        let closed = closed.load(ordering: .relaxed)
        return EchoServer.Statistics(
            accepted: accepted, open: accepted - closed, closed: closed,
            acceptErrors: acceptErrors.load(ordering: .relaxed))
    }

    func postFirstAccept() throws(RingPortError) {
        let context = acceptContexts.take()
        outstandingAccepts.add(1, ordering: .relaxed)
        do {
            try port.accept(on: listener, context: context)
        } catch {
            retireAccept(context)
            throw error
        }
    }

    // MARK: Completion handling (worker threads)

    func handle(_ completion: Completion) {
        switch completion.operation {
        case .read:
            readCompleted(completion)
        case .write:
            writeCompleted(completion)
        case .accept:
            acceptCompleted(completion)
        case .timeout:
            // The back-off after a failed accept is over.
            if let context = completion.context { postAccept(context) }
        default:
            break
        }
    }

    private func acceptCompleted(_ completion: Completion) {
        guard let context = completion.context else { return }
        if let descriptor = completion.acceptedDescriptor {
            openConnection(descriptor: descriptor, peer: context.acceptedPeerAddress)
            postAccept(context)
            return
        }
        guard !completion.isCancelled, state.load(ordering: .acquiring) == .running else {
            retireAccept(context)
            return
        }
        // EMFILE, ENFILE, ENOBUFS, ...: keep serving the connections we hold and try again
        // shortly instead of spinning on a listener that keeps failing.
        acceptErrors.add(1, ordering: .relaxed)
        logger.warning("accept failed: \(completion.error.map { "\($0)" } ?? "\(completion.result)"); retrying in 10 ms")
        do {
            try port.timeout(after: .milliseconds(10), context: context, handle: listener)
        } catch {
            retireAccept(context)
        }
    }

    private func postAccept(_ context: IOContext) {
        guard state.load(ordering: .acquiring) == .running else {
            retireAccept(context)
            return
        }
        do {
            try port.accept(on: listener, context: context)
        } catch {
            if error.code != .handleClosed && error.code != .portClosed {
                logger.error("posting accept: \(error)")
            }
            retireAccept(context)
        }
    }

    private func retireAccept(_ context: IOContext) {
        acceptContexts.recycle(context)
        outstandingAccepts.subtract(1, ordering: .releasing)
    }

    private func openConnection(descriptor: Int32, peer: SocketAddress?) {
        guard state.load(ordering: .acquiring) == .running else {
            Glibc.close(descriptor)
            return
        }
        let connection: IOHandle
        do {
            connection = try port.associate(descriptor: descriptor, peerAddress: peer)
        } catch {
            logger.error("associating connection: \(error)")
            Glibc.close(descriptor)
            return
        }
        accepted.add(1, ordering: .relaxed)
        // Shutdown sets `stopping` before it closes every handle: a connection associated after
        // that check would be missed by it, so look again now that the handle exists.
        guard state.load(ordering: .acquiring) == .running else {
            port.close(connection)
            closed.add(1, ordering: .relaxed)
            return
        }
        postRead(connection, contexts.take())
    }

    private func readCompleted(_ completion: Completion) {
        guard let connection = completion.handle, let context = completion.context else { return }
        let count = completion.bytesTransferred
        guard completion.error == nil, count > 0 else {
            // 0 bytes: the peer closed. An error: reset, cancelled by shutdown, ...
            closeConnection(connection, context)
            return
        }
        context.count = count
        context.offset = 0
        postWrite(connection, context)
    }

    private func writeCompleted(_ completion: Completion) {
        guard let connection = completion.handle, let context = completion.context else { return }
        guard completion.error == nil, completion.bytesTransferred > 0 else {
            closeConnection(connection, context)
            return
        }
        context.offset += completion.bytesTransferred
        if context.offset < context.count {
            postWrite(connection, context)  // a short send: finish it
        } else {
            postRead(connection, context)
        }
    }

    private func postRead(_ connection: IOHandle, _ context: IOContext) {
        do {
            try port.read(connection, into: context)
        } catch {
            closeConnection(connection, context)
        }
    }

    private func postWrite(_ connection: IOHandle, _ context: IOContext) {
        do {
            try port.write(connection, from: context, range: context.offset..<context.count)
        } catch {
            closeConnection(connection, context)
        }
    }

    private func closeConnection(_ connection: IOHandle, _ context: IOContext) {
        port.close(connection)
        contexts.recycle(context)
        closed.add(1, ordering: .relaxed)
    }
}
