import Glibc
import Logging
import RingPort
import Synchronization

/// The inside of a ``TCPServer``: the completion handler its workers run, accepting, the idle
/// sweep, and the shutdown sequence.
///
/// Thread-safety: ``handle(_:)`` runs on any worker (the port serialises the completions of one
/// connection); the rest is called by ``TCPServer`` and synchronised with atomics and locks.
final class ServerCore: Sendable {
    enum State: UInt8, AtomicRepresentable {
        case idle, running, draining, stopped
    }

    /// What a timer's context is for (its `IOContext.userValue`).
    enum TimerPurpose: UInt64 {
        /// A context of the listener's accepts, carrying the back-off timer after a failed accept.
        case acceptBackoff = 1
        /// The idle sweep's timer.
        case sweep = 2
    }

    /// A command posted on a connection's handle (the user completion's value), so that it runs
    /// serialised with the connection's other completions.
    enum ConnectionCommand: UInt64 {
        /// Open it: the handler's callback, the first receive.
        case open = 1
        /// Close gracefully (shutdown).
        case shutdown = 2
        /// Close at once (forced shutdown).
        case forceClose = 3
        /// Close if still idle.
        case idleCheck = 4
        /// Provided buffers are back after `ENOBUFS`.
        case buffersAvailable = 5
        /// Run the closure of `Connection.execute(_:)` (in the completion's context).
        case execute = 6
    }

    let port: CompletionPort
    let resources: ServerResources
    let forceRequested = Atomic<Bool>(false)
    private let listener: IOHandle
    private let handler: any ConnectionHandler
    private let configuration: TCPServer.Configuration
    private let logger: Logger
    private let state = Atomic<State>(.idle)
    private let connections = LockedValue<[IOHandle.ID: Connection]>([:])
    private let acceptContexts: [IOContext]
    private let useMultishotAccept: Bool
    /// Accepts (or their back-off timers) in flight, and the sweep timer.
    private let outstandingTimersAndAccepts = Atomic<Int>(0)
    private let acceptBackoff = AcceptBackoff()
    private let sweepContext = IOContext(capacity: 0)
    private let sweepInterval: Duration

    init(
        port: CompletionPort, listener: IOHandle, configuration: TCPServer.Configuration,
        features: IOURingFeatures, handler: some ConnectionHandler
    ) {
        self.port = port
        self.listener = listener
        self.handler = handler
        self.configuration = configuration
        logger = configuration.logger
        let counters = ServerCounters(label: configuration.label)
        resources = ServerResources(
            port: port, configuration: configuration, features: features, counters: counters,
            finishedWriting: { connection, context in handler.connection(connection, finishedWriting: context) })
        switch configuration.acceptStrategy {
        case .automatic:
            useMultishotAccept = features.multishotAccept
            acceptContexts = (0..<(useMultishotAccept ? 1 : 16)).map { _ in IOContext(capacity: 0) }
        case .multishot:
            useMultishotAccept = true
            acceptContexts = [IOContext(capacity: 0)]
        case .pool(let depth):
            useMultishotAccept = false
            acceptContexts = (0..<depth).map { _ in IOContext(capacity: 0) }
        }
        for context in acceptContexts { context.userValue = TimerPurpose.acceptBackoff.rawValue }
        sweepContext.userValue = TimerPurpose.sweep.rawValue
        if let idle = configuration.idleTimeout {
            sweepInterval = max(.milliseconds(10), min(.seconds(1), idle / 4))
        } else {
            sweepInterval = .seconds(1)
        }
    }

    var acceptDescription: String {
        useMultishotAccept ? "multishot accept" : "\(acceptContexts.count) pre-posted accepts"
    }

    var receiveDescription: String {
        resources.multishotReceive
            ? "multishot receive into provided buffers" : "plain receive into per-connection buffers"
    }

    func transition(from old: State, to new: State) -> Bool {
        state.compareExchange(expected: old, desired: new, ordering: .acquiringAndReleasing).exchanged
    }

    private var isRunning: Bool { state.load(ordering: .acquiring) == .running }

    // MARK: Completions (worker threads)

    /// Handles a worker's batch (``TCPServer/Configuration/completionBatch``), in order.
    func handle(_ batch: [Completion]) {
        // By index: each completion is read in place, not copied out of the array.
        for index in batch.indices { handle(batch[index]) }
    }

    func handle(_ completion: Completion) {
        switch completion.operation {
        case .accept:
            acceptCompleted(completion)
        case .read, .write, .user, .timeout:
            // A connection's completion. Its handle points at the connection, unretained: the
            // connection stays in `connections` until it finishes, and finishing clears the
            // pointer first, in a completion of the same handle (nothing runs concurrently).
            // The server's own timers (the sweep, an accept's back-off) have no connection.
            guard let owner = completion.handle?.unretainedOwner else {
                if completion.operation == .timeout {
                    timerFired(completion)
                } else if completion.operation == .user, completion.userValue == ConnectionCommand.execute.rawValue,
                    let context = completion.context
                {
                    // The connection finished first: the closure is dropped.
                    Connection.takeExecuteRequest(from: context, resources: resources)
                }
                return
            }
            owner._withUnsafeGuaranteedRef { object in
                handle(completion, of: unsafeDowncast(object, to: Connection.self))
            }
        default:
            break
        }
    }

    @inline(__always)
    private func handle(_ completion: Completion, of connection: Connection) {
        switch completion.operation {
        case .read:
            connection.receiveCompleted(completion) { bytes in
                handler.connection(connection, received: bytes)
            }
        case .write:
            connection.sendCompleted(completion)
        case .timeout:
            connection.timeoutCompleted(completion)
        default:
            guard let command = ConnectionCommand(rawValue: completion.userValue) else { return }
            switch command {
            case .open: start(connection)
            case .shutdown: connection.closeRequested(.serverShutdown, graceful: true)
            case .forceClose: connection.closeRequested(.serverShutdown, graceful: false)
            case .idleCheck: connection.closeRequested(.idleTimeout, graceful: false)
            case .buffersAvailable: connection.buffersAvailable()
            case .execute:
                if let context = completion.context {
                    Connection.takeExecuteRequest(from: context, resources: resources)(connection)
                }
            }
        }
        finishIfDone(connection)
    }

    private func finishIfDone(_ connection: Connection) {
        guard let reason = connection.finishIfDone() else { return }
        connection.handle.unretainedOwner = nil
        // `connections` held the connection (the caller's reference is unretained): keep it
        // alive until the handler has heard of the close.
        let removed = connections.withLock { $0.removeValue(forKey: connection.id) }
        withExtendedLifetime(removed) {
            resources.counters.closed.add(1, ordering: .relaxed)
            resources.counters.connectionClosed(after: connection.openedAt.duration(to: .now))
            handler.connectionClosed(connection, reason: reason)
        }
    }

    private func timerFired(_ completion: Completion) {
        guard let context = completion.context, let purpose = TimerPurpose(rawValue: context.userValue) else { return }
        switch purpose {
        case .acceptBackoff:
            // The back-off after a failed accept is over (or was cancelled at shutdown).
            postAccept(context)
        case .sweep:
            sweep()
        }
    }

    // MARK: Accepting

    func startAccepting() throws(RingPortError) {
        for context in acceptContexts {
            outstandingTimersAndAccepts.add(1, ordering: .relaxed)
            do {
                try postAcceptOperation(context)
            } catch {
                outstandingTimersAndAccepts.subtract(1, ordering: .relaxed)
                throw error
            }
        }
    }

    private func postAcceptOperation(_ context: IOContext) throws(RingPortError) {
        if useMultishotAccept {
            try port.acceptMultishot(on: listener, context: context)
        } else {
            try port.accept(on: listener, context: context)
        }
    }

    private func postAccept(_ context: IOContext) {
        guard isRunning else {
            outstandingTimersAndAccepts.subtract(1, ordering: .releasing)
            return
        }
        do {
            try postAcceptOperation(context)
        } catch {
            if error.code != .handleClosed && error.code != .portClosed {
                logger.error("\(configuration.label): posting an accept: \(error)")
            }
            outstandingTimersAndAccepts.subtract(1, ordering: .releasing)
        }
    }

    private func acceptCompleted(_ completion: Completion) {
        guard let context = completion.context else { return }
        if let descriptor = completion.acceptedDescriptor {
            if acceptBackoff.succeeded() {
                logger.notice("\(configuration.label): accepting again")
            }
            openConnection(descriptor)
        }
        guard !completion.hasMore else { return }
        guard isRunning else {
            // Shutdown: the listener is closed and its accepts cancelled.
            outstandingTimersAndAccepts.subtract(1, ordering: .releasing)
            return
        }
        guard let error = completion.error, !completion.isCancelled else {
            // Done (a single accept, or a multishot accept the kernel ended), or cancelled while
            // the server runs (the kernel cancels a request whose submitting thread exited):
            // accept again.
            postAccept(context)
            return
        }
        // ECONNABORTED and the like end one connection in the backlog: accept again. EMFILE,
        // ENFILE, ENOBUFS, ENOMEM...: keep serving what we have, try again after a back-off
        // instead of spinning on a listener that keeps failing; say so once per episode.
        resources.counters.acceptErrors.add(1, ordering: .relaxed)
        guard let (delay, started) = acceptBackoff.delay(after: error) else {
            postAccept(context)
            return
        }
        if started {
            logger.warning("\(configuration.label): accept failed: \(error); backing off and retrying")
        }
        do {
            try port.timeout(after: delay, context: context, handle: listener)
        } catch {
            outstandingTimersAndAccepts.subtract(1, ordering: .releasing)
        }
    }

    private func openConnection(_ descriptor: Int32) {
        guard isRunning else {
            SystemCall.close(descriptor)
            return
        }
        let counters = resources.counters
        let open = counters.accepted.load(ordering: .relaxed) - counters.closed.load(ordering: .relaxed)
        guard open < configuration.maximumConnections else {
            SystemCall.close(descriptor)
            counters.refused.add(1, ordering: .relaxed)
            return
        }
        try? TCPSocket.setNoDelay(descriptor)
        let peer = try? TCPSocket.peerAddress(of: descriptor)
        let handle: IOHandle
        do {
            handle = try port.associate(descriptor: descriptor, peerAddress: peer)
        } catch {
            logger.error("\(configuration.label): associating a connection: \(error)")
            SystemCall.close(descriptor)
            return
        }
        let connection = Connection(handle: handle, peerAddress: peer, resources: resources)
        handle.unretainedOwner = Unmanaged.passUnretained(connection)
        connections.withLock { $0[connection.id] = connection }
        counters.accepted.add(1, ordering: .relaxed)
        // The connection lives on a ring of its own, whose workers may handle its completions
        // while this accept's handler still runs. Everything a connection does must happen in
        // completions of its handle, which the port serialises: so it opens in one.
        do {
            try port.post(handle: handle, value: ConnectionCommand.open.rawValue)
        } catch {
            // Nothing of the connection ran: undo what opening set up (the handle's reference to
            // the connection, its pooled contexts, the handle itself).
            logger.error("\(configuration.label): opening a connection: \(error)")
            handle.unretainedOwner = nil
            connection.abandonUnopened()
            port.close(handle)
            _ = connections.withLock { $0.removeValue(forKey: connection.id) }
            counters.closed.add(1, ordering: .relaxed)
        }
    }

    /// Opens a connection, in a completion of its own handle.
    private func start(_ connection: Connection) {
        handler.connectionOpened(connection)
        connection.start()
        if !isRunning {
            // Shutdown began after the connection was accepted and may have missed it: close it
            // gracefully like the others (what already arrived is answered).
            connection.closeRequested(.serverShutdown, graceful: true)
        }
    }

    // MARK: Idle sweep and metrics

    func startSweeping() throws(RingPortError) {
        outstandingTimersAndAccepts.add(1, ordering: .relaxed)
        do {
            try port.timeout(after: sweepInterval, context: sweepContext)
        } catch {
            outstandingTimersAndAccepts.subtract(1, ordering: .relaxed)
            throw error
        }
    }

    /// Asks every connection idle for longer than the timeout to close, wakes connections waiting
    /// for buffers, returns memory freed after a burst, exports the metrics, and re-arms.
    private func sweep() {
        if configuration.idleTimeout != nil {
            let now = MonotonicInstant.coarseNow
            connections.withLock { connections in
                for connection in connections.values where connection.isIdle(at: now) {
                    try? port.post(handle: connection.handle, value: ConnectionCommand.idleCheck.rawValue)
                }
            }
        }
        resources.wakeAllWaitingForBuffers()
        resources.returnIdleMemory()
        resources.counters.export(port: port.statistics)
        guard isRunning else {
            outstandingTimersAndAccepts.subtract(1, ordering: .releasing)
            return
        }
        do {
            try port.timeout(after: sweepInterval, context: sweepContext)
        } catch {
            outstandingTimersAndAccepts.subtract(1, ordering: .releasing)
        }
    }

    // MARK: Shutdown (the thread calling TCPServer.shutdown)

    /// Stops accepting, closes every connection (gracefully for `gracePeriod`, then by force),
    /// and waits until nothing of the server is in flight.
    func drain(gracePeriod: Duration) {
        let start = MonotonicInstant.now
        port.close(listener)
        _ = try? port.cancel(sweepContext)
        postToEveryConnection(.shutdown)
        _ = waitUntil(start.advanced(by: gracePeriod)) {
            resources.counters.snapshot().open == 0 || forceRequested.load(ordering: .acquiring)
        }
        let open = resources.counters.snapshot().open
        if open > 0 {
            let why = forceRequested.load(ordering: .acquiring) ? "on request" : "after the grace period"
            logger.warning("\(configuration.label): closing \(open) connection(s) at once \(why)")
            postToEveryConnection(.forceClose)
        }
        let drained = waitUntil(MonotonicInstant.now.advanced(by: configuration.shutdownTimeout)) {
            resources.counters.snapshot().open == 0 && outstandingTimersAndAccepts.load(ordering: .acquiring) == 0
                && port.isIdle
        }
        if !drained {
            logger.warning(
                """
                \(configuration.label): completions still due after \(configuration.shutdownTimeout); \
                handled once the workers stopped
                """
            )
        }
        logger.info("\(configuration.label): drained in \(start.duration(to: .now))")
    }

    /// Marks the server stopped and reports.
    func finish() {
        state.store(.stopped, ordering: .releasing)
        resources.counters.export(port: port.statistics)
        let statistics = resources.counters.snapshot()
        logger.info(
            """
            \(configuration.label) stopped: \(statistics.accepted) accepted, \(statistics.refused) refused, \
            \(statistics.closed) closed, \(statistics.bytesReceived) bytes in, \(statistics.bytesSent) bytes out, \
            \(statistics.idleTimeouts) idle timeouts, \
            \(statistics.acceptErrors + statistics.connectionErrors + statistics.protocolErrors) errors
            """
        )
    }

    private func postToEveryConnection(_ command: ConnectionCommand) {
        connections.withLock { connections in
            for connection in connections.values {
                try? port.post(handle: connection.handle, value: command.rawValue)
            }
        }
    }
}
