import SystemPackage

/// The lifecycle of a ``Connection``: where it is (``Phase``), whether it reads (``Reading``),
/// which of its operations are in flight, and the one transition function,
/// ``apply(_:writeQueueIsEmpty:)``, that moves it and says what the connection must do.
///
/// ```
///            opened          closeGracefully           write queue empty,          last completion in
///   unopened ──────▶ open ──────────────▶ draining ── no receive in flight ──▶ closed ──────────────▶ finished
///                     │                       │                                ▲  ▲
///                     │                       └── (closed by the handler, ──▶ lingering ── peer's FIN,
///                     │                            the peer still sending)        timer, error
///                     └───────────────────────── closeNow ────────────────────────┘
/// ```
///
/// - **unopened**: accepted, its *open* command not run yet. Requests to close (a shutdown
///   posted to every connection just after this one was accepted) are ignored: the open runs
///   next and closes the connection itself when the server is stopping. Nothing else could
///   tell the handler of a close it was never told the open of.
/// - **open**: reading (unless ``Reading/paused`` for backpressure, waiting for provided buffers,
///   or ended by the peer) and writing.
/// - **draining**: closing gracefully. No more reading (the receive is cancelled); what arrived is
///   still delivered and what is queued is sent; then the descriptor closes — or, when the
///   handler closed the connection and the peer has not ended its side, the connection lingers.
/// - **lingering** (a lingering close): the write side is shut down, so the peer reads the
///   last response and then an end of stream; what still arrives is read and dropped until the
///   peer closes its side, a receive fails, or the linger timer fires. Closing the descriptor
///   at once would make the kernel answer the peer's unread or later bytes with a reset, and a
///   reset can destroy the response the peer has not read yet: a client still uploading a body
///   the server refused (413) would see "connection reset" instead of the status.
/// - **closed**: the descriptor is closed, so the port cancels what is in flight; the connection
///   waits for those completions.
/// - **finished**: every completion is in; the connection gave back its contexts and the server
///   told the handler (once).
///
/// Bytes of a receive are delivered before its ``Event/receiveFinished(_:)`` is applied: the
/// next receive (posted when that event leaves the connection reading) may reuse the buffer.
///
/// Thread-safety: a value inside its connection, confined like the rest of it to the
/// connection's completions.
struct ConnectionState {
    enum Phase: Equatable {
        case unopened
        case open
        case draining(Connection.CloseReason)
        case lingering(Connection.CloseReason)
        case closed(Connection.CloseReason)
        case finished(Connection.CloseReason)
    }

    enum Reading: Equatable {
        /// A receive is posted whenever none is in flight.
        case active
        /// The write queue is over its limit: no receive until half of it is sent.
        case paused
        /// The ring ran out of provided buffers (`ENOBUFS`): no receive until one comes back.
        case waitingForBuffers
        /// The peer closed its side: nothing more will arrive.
        case ended
    }

    /// How a receive ended (its last completion; a multishot receive's earlier ones carry
    /// bytes and change nothing here).
    enum ReceiveOutcome {
        /// Bytes arrived (and were delivered).
        case bytes
        /// Cancelled: by the connection (pause, close) or by the kernel (its submitting thread
        /// exited); either way, receive again if the connection still reads.
        case cancelled
        /// The ring had no provided buffer (`ENOBUFS`).
        case noBuffers
        /// The peer closed its side (a receive of 0 bytes).
        case endOfStream
        /// Reset, or another error: the connection closes at once.
        case failed(Errno)
    }

    /// How a send ended.
    enum SendOutcome {
        /// Bytes were sent (the write queue already accounts for them).
        case sent
        /// Cancelled without sending (the kernel cancelled it, or the descriptor closed).
        case cancelled
        /// Broken pipe, reset, ...: the connection closes at once.
        case failed(Errno)
    }

    /// What happened to the connection.
    enum Event {
        /// The connection opened: it starts reading.
        case opened
        /// A receive was posted.
        case receivePosted
        /// A receive's last completion arrived.
        case receiveFinished(ReceiveOutcome)
        /// Provided buffers came back after ``ReceiveOutcome/noBuffers``.
        case buffersAvailable
        /// A send was posted.
        case sendPosted
        /// A send's completion arrived.
        case sendFinished(SendOutcome)
        /// The write queue grew over its limit: stop reading.
        case pauseReading
        /// The write queue drained to half its limit: read again.
        case resumeReading
        /// Stop reading, deliver what arrived, send what is queued, then close.
        case closeGracefully(Connection.CloseReason)
        /// Close the descriptor now (the port cancels what is in flight).
        case closeNow(Connection.CloseReason)
        /// The linger timer was posted.
        case lingerTimerPosted
        /// The linger timer's completion arrived: it fired, or was cancelled (by the
        /// descriptor's close, or by the port). A connection still lingering closes now.
        case lingerTimerFinished
    }

    /// What the connection must do after an event.
    struct Actions: OptionSet {
        let rawValue: UInt8
        /// Post a receive (plain, or multishot).
        static let postReceive = Actions(rawValue: 1 << 0)
        /// Cancel the receive in flight.
        static let cancelReceive = Actions(rawValue: 1 << 1)
        /// Close the handle (and so the descriptor).
        static let closeDescriptor = Actions(rawValue: 1 << 2)
        /// Shut down the write side and post the linger timer (after any receive to post).
        static let beginLingering = Actions(rawValue: 1 << 3)
    }

    // The phase is declared last. Its tag is read with a 4-byte load around the tag's byte, and
    // declared first it shared that load with the flags after it: a load over a flag just
    // stored cannot take its value from the store and waits for it to reach the cache (a
    // store-forwarding stall). That wait held half of `apply`'s samples under an echo load.
    private(set) var reading = Reading.active
    private(set) var receiveInFlight = false
    private(set) var sendInFlight = false
    private(set) var lingerTimerInFlight = false
    /// Whether receives are multishot: pausing then cancels the one in flight (a plain receive
    /// is let finish: it is the last).
    private let multishotReceive: Bool
    /// Whether a connection the handler closes lingers (the server has a linger timeout).
    private let lingers: Bool
    private(set) var phase = Phase.unopened

    init(multishotReceive: Bool, lingers: Bool) {
        self.multishotReceive = multishotReceive
        self.lingers = lingers
    }

    /// Why the connection is closing or closed; nil while open.
    var closeReason: Connection.CloseReason? {
        switch phase {
        case .unopened, .open: nil
        case .draining(let reason), .lingering(let reason), .closed(let reason), .finished(let reason): reason
        }
    }

    /// Whether bytes received are delivered and writes are sent: until the connection lingers
    /// or its descriptor closes.
    var exchangesData: Bool {
        switch phase {
        case .unopened, .open, .draining: true
        case .lingering, .closed, .finished: false
        }
    }

    /// Whether the connection waits for provided buffers to receive again: open or lingering,
    /// its last receive ended with `ENOBUFS`.
    var waitsForBuffers: Bool {
        reading == .waitingForBuffers && (phase == .open || isLingering)
    }

    /// Whether the connection lingers: it drops what it receives until it closes.
    var isLingering: Bool {
        if case .lingering = phase { return true }
        return false
    }

    /// Whether a send may be posted now.
    var canSend: Bool {
        exchangesData && !sendInFlight
    }

    /// The transition function: moves the state for `event` and returns what the connection must
    /// do. `writeQueueIsEmpty` tells whether a draining connection has sent everything.
    mutating func apply(_ event: Event, writeQueueIsEmpty: Bool) -> Actions {
        var actions: Actions = []
        switch event {
        case .opened:
            if phase == .unopened { phase = .open }
        case .receivePosted:
            receiveInFlight = true
        case .receiveFinished(let outcome):
            receiveInFlight = false
            switch outcome {
            case .bytes, .cancelled:
                break
            case .noBuffers:
                if reading == .active { reading = .waitingForBuffers }
            case .endOfStream:
                reading = .ended
                actions.formUnion(startClosing(.peerClosed, graceful: true))
            case .failed(let errno):
                actions.formUnion(startClosing(.failed(errno), graceful: false))
            }
        case .buffersAvailable:
            if reading == .waitingForBuffers { reading = .active }
        case .sendPosted:
            sendInFlight = true
        case .sendFinished(let outcome):
            sendInFlight = false
            if case .failed(let errno) = outcome {
                actions.formUnion(startClosing(.failed(errno), graceful: false))
            }
        case .pauseReading:
            if reading == .active || reading == .waitingForBuffers {
                reading = .paused
                if receiveInFlight && multishotReceive { actions.insert(.cancelReceive) }
            }
        case .resumeReading:
            if reading == .paused { reading = .active }
        case .closeGracefully(let reason):
            actions.formUnion(startClosing(reason, graceful: true))
        case .closeNow(let reason):
            actions.formUnion(startClosing(reason, graceful: false))
        case .lingerTimerPosted:
            lingerTimerInFlight = true
        case .lingerTimerFinished:
            // Expired, or cancelled: by the descriptor's close (closed already, nothing to do),
            // or by the port without being asked (its submitting thread exited, or a leader
            // change could not submit it again). A lingering connection without its timer
            // would linger without bound: it closes now either way.
            lingerTimerInFlight = false
            if isLingering { actions.formUnion(startClosing(.closedByHandler, graceful: false)) }
        }
        // What holds in every state, whatever the event.
        if case .draining(let reason) = phase, writeQueueIsEmpty, !receiveInFlight {
            if lingers && reason == .closedByHandler && reading != .ended {
                phase = .lingering(reason)
                // Receive again, also after an `ENOBUFS` while draining (the wait for buffers
                // is for connections that read; a lingering one finds out again).
                if reading == .paused || reading == .waitingForBuffers { reading = .active }
                actions.insert(.beginLingering)
            } else {
                phase = .closed(reason)
                actions.insert(.closeDescriptor)
            }
        }
        if case .lingering(let reason) = phase, reading == .ended {
            // The peer closed its side: nothing is left to drop.
            phase = .closed(reason)
            actions.insert(.closeDescriptor)
        }
        if phase == .open || isLingering, reading == .active, !receiveInFlight {
            actions.insert(.postReceive)
        }
        return actions
    }

    /// Open → draining (graceful: the receive in flight is cancelled) or → closed; a connection
    /// already closing keeps its first reason, and closes now if asked to.
    private mutating func startClosing(_ reason: Connection.CloseReason, graceful: Bool) -> Actions {
        switch phase {
        case .unopened:
            return []
        case .open:
            if graceful {
                phase = .draining(reason)
                return receiveInFlight ? .cancelReceive : []
            }
            phase = .closed(reason)
            return .closeDescriptor
        case .draining(let first), .lingering(let first):
            if graceful { return [] }
            phase = .closed(first)
            return .closeDescriptor
        case .closed, .finished:
            return []
        }
    }

    /// Closed with nothing in flight → finished: returns the reason, once.
    mutating func finishIfDone() -> Connection.CloseReason? {
        guard case .closed(let reason) = phase, !receiveInFlight, !sendInFlight, !lingerTimerInFlight else {
            return nil
        }
        phase = .finished(reason)
        return reason
    }
}
