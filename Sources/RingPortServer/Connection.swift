import DequeModule
import Glibc
import RingPort
import Synchronization
import SystemPackage

/// One accepted TCP connection of a ``TCPServer``.
///
/// ## Threads
/// Use a connection only inside the ``ConnectionHandler`` callbacks of that connection: the port
/// runs them one at a time, so the connection needs no lock. From any other thread (a broadcast,
/// a reply computed elsewhere), hand the work to ``execute(_:)``, which runs it in a completion
/// of the connection's handle, serialised with the callbacks. (The server itself reaches a
/// connection from other threads only that way too.)
///
/// ## Writing
/// Writes are queued in order and sent one at a time; a short send is finished before the next
/// bytes go. ``write(_:)-(UnsafeRawBufferPointer)`` copies into pooled buffers, so the caller's
/// bytes are free at once; ``write(_:)-(ReceivedBytes)`` sends received bytes back without a
/// copy; ``write(_:range:)`` sends from the application's own context, with a zero-copy send when
/// the range is at least ``TCPServer/Configuration/zeroCopyThreshold`` bytes. When more than
/// ``TCPServer/Configuration/maximumQueuedWriteBytes`` are queued, the connection stops reading
/// until half of that is sent: a peer that does not read cannot make the server buffer without
/// bound.
public final class Connection: @unchecked Sendable {
    // @unchecked: the mutable state is confined to the connection's callbacks, which the port
    // serialises (see above); `lastProgress` is atomic because the idle sweep reads it.
    //
    // Stored properties marked @exclusivity(unchecked) skip Swift's dynamic exclusivity checks:
    // every access is already serialised as described, and on the echo benchmark the checks
    // cost 12–14% of the server's CPU per message (measured with -enforce-exclusivity=unchecked
    // against the default build; docs/ARCHITECTURE.md).

    /// Why a connection closed.
    public enum CloseReason: Hashable, Sendable, CustomStringConvertible {
        /// The peer closed its side (end of stream) and everything queued was sent.
        case peerClosed
        /// The handler called ``Connection/close()``.
        case closedByHandler
        /// A receive or send failed (reset by the peer, broken pipe, ...).
        case failed(Errno)
        /// No progress for longer than ``TCPServer/Configuration/idleTimeout``.
        case idleTimeout
        /// The server shut down.
        case serverShutdown

        /// A short phrase for logs, e.g. "idle timeout" or "failed: ECONNRESET".
        public var description: String {
            switch self {
            case .peerClosed: "peer closed"
            case .closedByHandler: "closed by handler"
            case .failed(let errno): "failed: \(errno)"
            case .idleTimeout: "idle timeout"
            case .serverShutdown: "server shutdown"
            }
        }
    }

    /// The connection's handle identity (ring, slot, generation): not reused until its slot was
    /// reused 2³² times (see `IOHandle.ID`).
    public var id: IOHandle.ID { handle.id }
    /// The peer's address.
    public let peerAddress: SocketAddress?
    /// The application's per-connection state, confined to the connection's callbacks.
    @exclusivity(unchecked) public var userState: (any Sendable)?

    let handle: IOHandle
    let resources: ServerResources
    /// The context of the receive.
    let receiveContext: IOContext
    /// The bookkeeping context of sends from provided buffers, and of the linger timer (a
    /// lingering connection sends nothing).
    private let sendContext: IOContext

    // Confined to the connection's callbacks.
    /// The lifecycle: phase, reading, operations in flight (see ``ConnectionState``).
    @exclusivity(unchecked) private var state: ConnectionState
    @exclusivity(unchecked) private var writeQueue = WriteQueue()
    /// Bytes queued and not yet sent.
    @exclusivity(unchecked) public private(set) var queuedBytes = 0
    /// Bytes sent since the sends last counted as progress (see
    /// ``TCPServer/Configuration/minimumSendRate``).
    @exclusivity(unchecked) private var sentSinceProgress = 0
    /// Whether the receive being delivered to the handler marked progress (its bytes count as
    /// progress): set for the handler's call only.
    @exclusivity(unchecked) private var progressMarkedByDelivery = false
    /// The provided buffer being delivered, and whether the handler kept it.
    @exclusivity(unchecked) private var deliveredBuffer: ReceivedBuffer?
    @exclusivity(unchecked) private var deliveredBufferRetained = false
    /// When the connection last made progress (see ``TCPServer/Configuration/idleTimeout``): a
    /// ``MonotonicInstant`` from the coarse clock (cheap enough to read twice per message),
    /// stored as its nanoseconds so that the idle sweep can read it from another thread.
    private let lastProgress: Atomic<UInt64>
    /// When the connection was accepted.
    let openedAt = MonotonicInstant.now

    init(handle: IOHandle, peerAddress: SocketAddress?, resources: ServerResources) {
        self.handle = handle
        self.peerAddress = peerAddress
        self.resources = resources
        receiveContext = resources.receiveContexts.take()
        sendContext = resources.bookkeepingContexts.take()
        state = ConnectionState(
            multishotReceive: resources.multishotReceive, lingers: resources.lingeringCloseTimeout != nil)
        lastProgress = Atomic(MonotonicInstant.coarseNow.nanoseconds)
    }

    // MARK: The handler's API

    /// Whether the connection is closing (or closed). A connection closing gracefully still
    /// sends what is queued, and what is written until it lingers (see ``close()``) or its
    /// descriptor closes; later writes are dropped.
    public var isClosing: Bool { state.closeReason != nil }

    /// Whether writes are still accepted: until the connection lingers or its descriptor closes.
    private var acceptsWrites: Bool { state.exchangesData }

    /// Queues a copy of `bytes` for sending.
    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard acceptsWrites, !bytes.isEmpty else { return }
        let capacity = resources.writeChunkSize
        var remaining = bytes
        while !remaining.isEmpty {
            var copied = writeQueue.appendToLastChunk(remaining, capacity: capacity, sending: state.sendInFlight)
            if copied == 0 {
                let chunk = withWriteChunks {
                    WorkerWriteChunks.take(from: $0, port: Unmanaged.passUnretained(resources.port))
                }
                copied = min(remaining.count, capacity)
                chunk.unsafeBytes.copyMemory(from: remaining.baseAddress!, byteCount: copied)
                writeQueue.appendCopied(chunk, filled: copied)
            }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[copied...])
        }
        queued(bytes.count)
    }

    /// Queues a copy of `bytes` for sending.
    public func write<Bytes: Collection<UInt8>>(_ bytes: Bytes) {
        if let done: Void = bytes.withContiguousStorageIfAvailable({ write(UnsafeRawBufferPointer($0)) }) {
            return done
        }
        Array(bytes).withUnsafeBytes { write($0) }
    }

    /// Queues received bytes for sending back. A large provided buffer is sent as is and released
    /// after the send (no copy) when nothing else is queued and the ring has buffers to spare;
    /// otherwise, and for the connection's own receive buffer, the bytes are copied.
    public func write(_ received: ReceivedBytes) {
        guard acceptsWrites, received.count > 0 else { return }
        // Small receives are copied so that their provided buffer goes back to the ring at once;
        // large ones are sent from the buffer itself — when nothing else is queued (so one
        // connection holds at most one buffer) and the ring's budget allows it (so peers that
        // never read cannot hold the ring's buffers: ServerResources.pinBuffer).
        if let buffer = received.providedBuffer, buffer.id == deliveredBuffer?.id, !deliveredBufferRetained,
            buffer.count >= resources.writeChunkSize / 4, writeQueue.isEmpty, resources.pinBuffer(onRing: id.ring)
        {
            deliveredBufferRetained = true
            writeQueue.appendProvided(buffer)
            queued(buffer.count)
        } else {
            received.withUnsafeBytes { write($0) }
        }
    }

    /// Queues the bytes in `range` of the application's own `context` for sending, without a copy
    /// (a zero-copy send at or above the server's threshold). The connection owns the context
    /// until ``ConnectionHandler/connection(_:finishedWriting:)`` hands it back.
    public func write(_ context: IOContext, range: Range<Int>) {
        precondition(
            range.lowerBound >= 0 && range.upperBound <= context.capacity, "range outside the context's buffer")
        guard acceptsWrites, !range.isEmpty else {
            resources.finishedWriting(context, on: self)
            return
        }
        writeQueue.appendOwned(context, range: range)
        queued(range.count)
    }

    /// Closes the connection after everything queued is sent. Reading stops at once.
    ///
    /// Unless the peer has closed its side already (or the server was closing the connection
    /// already: a shutdown, the idle timeout), the close lingers
    /// (``TCPServer/Configuration/lingeringCloseTimeout``): once everything is sent, the write
    /// side is shut down (the peer reads an end of stream), and what the peer still sends is read
    /// and dropped until it closes its side or the timeout passes; then the descriptor closes.
    /// Nothing is delivered to the handler meanwhile. The handler hears of the close
    /// (``ConnectionHandler/connectionClosed(_:reason:)``) when the descriptor has closed.
    public func close() {
        apply(.closeGracefully(.closedByHandler))
    }

    /// Runs `body` with the connection on one of the port's workers, serialised with the
    /// connection's ``ConnectionHandler`` callbacks: how code on another thread writes to the
    /// connection or closes it. Any thread.
    ///
    /// `body` runs once, unless the connection finishes first (its handler's
    /// ``ConnectionHandler/connectionClosed(_:reason:)`` ran): then it is dropped without running.
    /// A connection closing gracefully still runs it; what it writes is sent unless the
    /// connection lingers already (``isClosing`` tells). The same rules as for a callback apply
    /// inside: return quickly. A handler that keeps connections to reach them this way must let
    /// each go in ``ConnectionHandler/connectionClosed(_:reason:)``: a connection references the
    /// server's resources, which reference the handler, so one kept past its close keeps the
    /// whole server alive. A closure still queued when the server's port closes (a shutdown
    /// whose last wait timed out) is dropped with the port's completions, and what it captured
    /// with it only when the process ends.
    ///
    /// - Throws: `RingPortError` with code `handleClosed` when the connection's descriptor is
    ///   closed already, `portClosed` when the server has stopped.
    public func execute(_ body: @escaping @Sendable (Connection) -> Void) throws(RingPortError) {
        let context = resources.bookkeepingContexts.take()
        context.attachment = ExecuteRequest(body)
        do {
            try resources.port.post(
                handle: handle, context: context, value: ServerCore.ConnectionCommand.execute.rawValue)
        } catch {
            Self.takeExecuteRequest(from: context, resources: resources)
            throw error
        }
    }

    /// Takes the request of ``execute(_:)`` out of its completion's context and gives the
    /// context back: the closure, to run (or to drop).
    @discardableResult
    static func takeExecuteRequest(
        from context: IOContext, resources: ServerResources
    ) -> @Sendable (Connection) -> Void {
        let request = unsafeDowncast(context.attachment.unsafelyUnwrapped, to: ExecuteRequest.self)
        context.attachment = nil
        resources.bookkeepingContexts.recycle(context)
        return request.body
    }

    /// Counts a request the handler rejected (malformed, too large) in the server's statistics.
    public func reportProtocolError() {
        resources.counters.protocolErrors.add(1, ordering: .relaxed)
    }

    /// Marks progress for the idle timeout, for handlers whose protocol counts only complete
    /// requests as progress (``TCPServer/Configuration/idleTimeoutCountsReceivedBytes`` false).
    public func markProgress() {
        lastProgress.store(MonotonicInstant.coarseNow.nanoseconds, ordering: .relaxed)
    }

    /// Whether the connection made no progress for the idle timeout, as of `now` (the coarse
    /// clock). Any thread (the idle sweep).
    func isIdle(at now: MonotonicInstant) -> Bool {
        guard let timeout = resources.idleTimeout else { return false }
        let last = MonotonicInstant(nanoseconds: lastProgress.load(ordering: .relaxed))
        return last.duration(to: now) >= timeout
    }

    // MARK: Events (called by the server, inside the connection's callbacks)

    /// The connection was accepted: start reading.
    func start() {
        apply(.opened)
    }

    /// A receive completed: hands the bytes (if any) to `deliver`, which calls the handler.
    func receiveCompleted(_ completion: Completion, deliver: (ReceivedBytes) -> Void) {
        // An error or the end of stream comes with the receive's last completion. It carries no
        // bytes; a provided buffer it names anyway (one the kernel had already taken for a
        // receive that then ended without data) goes straight back, or it would stay out for good.
        if let error = completion.error {
            if let buffer = completion.receivedBuffer { release(buffer) }
            if completion.isCancelled {
                // Paused for backpressure, or closing: nothing to do here. A cancellation the
                // connection did not ask for (the kernel cancels a request whose submitting
                // thread exited) must not leave it without a receive: the state posts one unless
                // paused or closing.
                apply(.receiveFinished(.cancelled))
            } else if error == .noBufferSpace {
                // Every provided buffer of the ring is out: receive again as soon as one comes back.
                resources.counters.bufferExhaustions.add(1, ordering: .relaxed)
                apply(.receiveFinished(.noBuffers))
                if state.waitsForBuffers && !resources.waitForBuffers(self) {
                    apply(.buffersAvailable)
                }
            } else {
                // A peer that resets the connection while it lingers (closing with bytes
                // unread) did what lingering waits for: not an error.
                if !state.isLingering { resources.counters.connectionErrors.add(1, ordering: .relaxed) }
                apply(.receiveFinished(.failed(error)))
            }
            return
        }
        let count = completion.bytesTransferred
        if count == 0 {
            if let buffer = completion.receivedBuffer { release(buffer) }
            apply(.receiveFinished(.endOfStream))
            return
        }
        withCounters { $0.bytesReceived.wrappingAdd(count, ordering: .relaxed) }
        if resources.idleTimeoutCountsReceivedBytes {
            markProgress()
            progressMarkedByDelivery = true
        }
        defer { progressMarkedByDelivery = false }
        // Bytes that arrived are delivered until the descriptor closes, also while closing
        // gracefully: a request received before a shutdown still gets its answer. A lingering
        // connection drops them.
        if let buffer = completion.receivedBuffer {
            if state.exchangesData {
                deliveredBuffer = buffer
                deliveredBufferRetained = false
                buffer.withUnsafeBytes { deliver(ReceivedBytes(storage: $0, providedBuffer: buffer)) }
                deliveredBuffer = nil
            }
            if !deliveredBufferRetained { release(buffer) }
            deliveredBufferRetained = false
        } else if state.exchangesData {
            receiveContext.withUnsafeBytes {
                deliver(ReceivedBytes(storage: UnsafeRawBufferPointer(rebasing: $0[0..<count]), providedBuffer: nil))
            }
        }
        if queuedBytes > resources.maximumQueuedWriteBytes && state.reading != .paused && state.reading != .ended {
            resources.counters.backpressurePauses.add(1, ordering: .relaxed)
            apply(.pauseReading)
        }
        // Delivered: only now may the next receive reuse the buffer.
        if !completion.hasMore {
            apply(.receiveFinished(.bytes))
        }
    }

    /// A send completed.
    func sendCompleted(_ completion: Completion) {
        guard completion.error == nil, completion.bytesTransferred > 0 else {
            if !completion.isCancelled {
                resources.counters.connectionErrors.add(1, ordering: .relaxed)
                apply(.sendFinished(.failed(completion.error ?? .brokenPipe)))
            } else {
                // Closing cancels sends only with the descriptor (then flush does nothing); any
                // other cancellation sent nothing, so the head of the queue goes again.
                apply(.sendFinished(.cancelled))
                flush()
            }
            return
        }
        let sent = completion.bytesTransferred
        withCounters { $0.bytesSent.wrappingAdd(sent, ordering: .relaxed) }
        queuedBytes -= sent
        // Progress when the peer has taken everything, or enough for the minimum send rate
        // since the bytes began to wait or since the last progress.
        sentSinceProgress += sent
        if queuedBytes == 0 || sentSinceProgress >= resources.sendProgressBytes {
            sentSinceProgress = 0
            markProgress()
        }
        if writeQueue.advanceFirst(by: sent) {
            finishFirstEntry()
        }
        apply(.sendFinished(.sent))
        if state.reading == .paused && queuedBytes <= resources.maximumQueuedWriteBytes / 2 {
            apply(.resumeReading)
        }
        flush()
    }

    /// Provided buffers came back after `ENOBUFS`: receive again.
    func buffersAvailable() {
        apply(.buffersAvailable)
    }

    /// A timeout on the connection's handle completed. The linger timer (its context is the
    /// connection's bookkeeping context) fired or was cancelled: a connection still lingering
    /// closes. A timer the handler posted on the handle itself is not the connection's business.
    func timeoutCompleted(_ completion: Completion) {
        guard completion.context === sendContext else { return }
        apply(.lingerTimerFinished)
    }

    /// The server asks the connection to close (shutdown or idle timeout).
    func closeRequested(_ reason: CloseReason, graceful: Bool) {
        if reason == .idleTimeout {
            // The sweep saw no progress; make sure it is still so now that we run. A connection
            // closing gracefully is cut too: one whose peer stopped reading would otherwise wait
            // for good to send what is queued (sends count as progress at the minimum send
            // rate, so one still draining at that rate is not cut).
            switch state.phase {
            case .open, .draining, .lingering: break
            case .unopened, .closed, .finished: return
            }
            guard isIdle(at: .coarseNow) else { return }
            resources.counters.idleTimeouts.add(1, ordering: .relaxed)
        }
        apply(graceful ? .closeGracefully(reason) : .closeNow(reason))
    }

    /// When the connection is closed and no operation of it is in flight, releases everything
    /// and returns the reason, once. The server then calls the handler's `connectionClosed`.
    func finishIfDone() -> CloseReason? {
        guard let reason = state.finishIfDone() else { return nil }
        resources.stopWaitingForBuffers(self)
        while !writeQueue.isEmpty {
            finishFirstEntry()
        }
        queuedBytes = 0
        resources.receiveContexts.recycle(receiveContext)
        resources.bookkeepingContexts.recycle(sendContext)
        return reason
    }

    /// The connection could not be opened (its *open* completion could not be posted): gives
    /// its pooled contexts back. Nothing was posted with them.
    func abandonUnopened() {
        resources.receiveContexts.recycle(receiveContext)
        resources.bookkeepingContexts.recycle(sendContext)
    }

    // MARK: Internals

    /// Moves the lifecycle for `event` (``ConnectionState/apply(_:writeQueueIsEmpty:)``) and does
    /// what it asks: cancel the receive, close the handle, post a receive.
    private func apply(_ event: ConnectionState.Event) {
        let actions = state.apply(event, writeQueueIsEmpty: writeQueue.isEmpty)
        if actions.contains(.cancelReceive) {
            _ = try? resources.port.cancel(receiveContext)
        }
        if actions.contains(.closeDescriptor) {
            // The port cancels what is in flight; those completions finish the close.
            resources.port.close(handle)
        }
        if actions.contains(.postReceive) {
            postReceive()
        }
        if actions.contains(.beginLingering) {
            beginLingering()
        }
    }

    /// Shuts down the write side (everything queued was sent) and posts the linger timer; the
    /// receive that drops what still arrives was posted just before. If either fails (the peer
    /// is gone already, the port is closing), the descriptor closes at once.
    private func beginLingering() {
        guard let timeout = resources.lingeringCloseTimeout else { return }
        do {
            try withPort { port throws(RingPortError) in
                try port.shutdownWriting(handle)
                try port.timeout(after: timeout, context: sendContext, handle: handle)
            }
            apply(.lingerTimerPosted)
        } catch {
            apply(.closeNow(state.closeReason ?? .closedByHandler))
        }
    }

    private func queued(_ count: Int) {
        if queuedBytes == 0 && count > 0 {
            // Bytes begin to wait: the minimum send rate is measured from here, not from a
            // progress long before (a reply after a quiet minute). A reply to the bytes being
            // delivered measures from their receive, which marked progress just before the
            // handler's call: no second reading of the clock (a handler that blocked for long
            // would take its time out of the peer's).
            sentSinceProgress = 0
            if !progressMarkedByDelivery { markProgress() }
        }
        queuedBytes += count
        flush()
    }

    private func postReceive() {
        do {
            if resources.multishotReceive {
                try withPort { port throws(RingPortError) in
                    try port.receiveMultishot(handle, context: receiveContext)
                }
            } else {
                try withPort { port throws(RingPortError) in try port.read(handle, into: receiveContext) }
            }
            apply(.receivePosted)
        } catch {
            failToPost(error)
        }
    }

    private func release(_ buffer: ReceivedBuffer) {
        resources.release(buffer, onRing: id.ring)
    }

    // The connection's resources (the counters, the write chunk pool) keep these objects alive,
    // so that the path of a message borrows them. Used as `resources.x.method()`, or passed to a
    // helper as an argument, each use retained and released `x`: a pair of reference counts per
    // use on the path of every message.

    /// Calls `body` with the server's counters, borrowed.
    @inline(__always)
    private func withCounters(_ body: (ServerCounters) -> Void) {
        Unmanaged.passUnretained(resources.counters)._withUnsafeGuaranteedRef(body)
    }

    /// Calls `body` with the port, borrowed.
    @inline(__always)
    private func withPort<Result>(
        _ body: (CompletionPort) throws(RingPortError) -> Result
    ) throws(RingPortError) -> Result {
        try Unmanaged.passUnretained(resources.port).withBorrowedInstance(body)
    }

    /// Calls `body` with the pool of write chunks, borrowed.
    @inline(__always)
    private func withWriteChunks<Result>(_ body: (ContextPool) -> Result) -> Result {
        Unmanaged.passUnretained(resources.writeChunks)._withUnsafeGuaranteedRef(body)
    }

    /// Takes the first entry off the write queue (sent, or dropped at the end) and hands its
    /// memory on: a chunk back to the pool, a provided buffer back to the ring, the
    /// application's context back to the handler.
    private func finishFirstEntry() {
        let entry = writeQueue.removeFirst()
        switch entry.source {
        case .copied:
            withWriteChunks {
                WorkerWriteChunks.recycle(
                    entry.context.unsafelyUnwrapped.takeRetainedValue(), to: $0,
                    port: Unmanaged.passUnretained(resources.port))
            }
        case .provided:
            release(entry.buffer.unsafelyUnwrapped)
            resources.unpinBuffer(onRing: id.ring)
        case .owned:
            resources.finishedWriting(entry.context.unsafelyUnwrapped.takeRetainedValue(), on: self)
        }
    }

    /// Posts the send of the head of the queue, unless one is in flight.
    private func flush() {
        guard state.canSend, let head = writeQueue.first else { return }
        do {
            let range = head.start..<head.end
            switch head.source {
            case .copied:
                try head.context.unsafelyUnwrapped.withBorrowedInstance { context throws(RingPortError) in
                    try withPort { port throws(RingPortError) in try port.write(handle, from: context, range: range) }
                }
            case .provided:
                try withPort { port throws(RingPortError) in
                    try port.write(handle, from: head.buffer.unsafelyUnwrapped, range: range, context: sendContext)
                }
            case .owned:
                try head.context.unsafelyUnwrapped.withBorrowedInstance { context throws(RingPortError) in
                    if range.count >= resources.zeroCopyThreshold && resources.zeroCopySend {
                        try withPort { port throws(RingPortError) in
                            try port.writeZeroCopy(handle, from: context, range: range)
                        }
                    } else {
                        try withPort { port throws(RingPortError) in
                            try port.write(handle, from: context, range: range)
                        }
                    }
                }
            }
            apply(.sendPosted)
        } catch {
            failToPost(error)
        }
    }

    private func failToPost(_ error: RingPortError) {
        if error.code != .handleClosed && error.code != .portClosed {
            resources.logger.error("connection \(id): \(error)")
            resources.counters.connectionErrors.add(1, ordering: .relaxed)
        }
        apply(.closeNow(state.closeReason ?? .failed(error.errno ?? .ioError)))
    }
}

/// The closure of ``Connection/execute(_:)``, boxed to travel as a context's `attachment`.
private final class ExecuteRequest: Sendable {
    let body: @Sendable (Connection) -> Void

    init(_ body: @escaping @Sendable (Connection) -> Void) {
        self.body = body
    }
}
