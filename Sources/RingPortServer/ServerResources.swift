import Glibc
import Logging
import RingPort
import Synchronization

/// What connections share with their server: the port, the pools, the limits, the counters.
///
/// Immutable after creation except for the pools and counters, which are thread-safe.
final class ServerResources: Sendable {
    let port: CompletionPort
    /// Receive contexts: buffers for plain receives, or empty when receives use provided buffers.
    let receiveContexts: ContextPool
    /// Empty contexts that only carry an operation (sends from provided buffers, timers, accepts).
    let bookkeepingContexts: ContextPool
    /// Buffers that written bytes are copied into.
    let writeChunks: ContextPool
    let counters: ServerCounters
    let logger: Logger
    let multishotReceive: Bool
    let zeroCopySend: Bool
    let zeroCopyThreshold: Int
    let maximumQueuedWriteBytes: Int
    /// Close a connection idle for this long (``TCPServer/Configuration/idleTimeout``); nil: never.
    let idleTimeout: Duration?
    let idleTimeoutCountsReceivedBytes: Bool
    /// Bytes sent that count as progress for the idle timeout while more wait to be sent
    /// (``TCPServer/Configuration/minimumSendRate`` × the idle timeout; 1 without a rate).
    let sendProgressBytes: Int
    /// How long a connection the handler closed lingers at most
    /// (``TCPServer/Configuration/lingeringCloseTimeout``); nil: it does not.
    let lingeringCloseTimeout: Duration?
    let writeChunkSize: Int
    /// Per ring: provided buffers held in write queues (echoed without a copy), and how many
    /// may be. See ``pinBuffer(onRing:)``.
    private let pinnedBuffers: [PinnedBufferCount]
    let pinnedBufferBudget: Int
    /// Per ring: connections whose multishot receive ended with `ENOBUFS`, waiting for a buffer.
    private let starved: [LockedValue<[Connection]>]
    private let starvedCount = Atomic<Int>(0)
    private let freedSinceMemoryReturn = Atomic<Int>(0)
    /// Calls the handler's `connection(_:finishedWriting:)` (set by the generic server).
    private let finishedWritingCallback: @Sendable (Connection, IOContext) -> Void

    init(
        port: CompletionPort, configuration: TCPServer.Configuration, features: IOURingFeatures,
        counters: ServerCounters,
        finishedWriting: @escaping @Sendable (Connection, IOContext) -> Void
    ) {
        self.port = port
        multishotReceive = port.supportsMultishotReceive && features.multishotReceive
        receiveContexts = ContextPool(bufferSize: multishotReceive ? 0 : configuration.receiveBufferSize)
        bookkeepingContexts = ContextPool(bufferSize: 0)
        writeChunks = ContextPool(bufferSize: configuration.writeChunkSize)
        self.counters = counters
        logger = configuration.logger
        zeroCopySend = features.zeroCopySend
        zeroCopyThreshold = configuration.zeroCopyThreshold
        maximumQueuedWriteBytes = configuration.maximumQueuedWriteBytes
        idleTimeout = configuration.idleTimeout
        idleTimeoutCountsReceivedBytes = configuration.idleTimeoutCountsReceivedBytes
        sendProgressBytes = Self.sendProgressBytes(
            minimumSendRate: configuration.minimumSendRate, idleTimeout: configuration.idleTimeout)
        lingeringCloseTimeout = configuration.lingeringCloseTimeout
        writeChunkSize = configuration.writeChunkSize
        starved = (0..<port.ringCount).map { _ in LockedValue([]) }
        pinnedBuffers = (0..<port.ringCount).map { _ in PinnedBufferCount() }
        pinnedBufferBudget = (configuration.port.providedBuffers?.count ?? 0) / 4
        finishedWritingCallback = finishedWriting
    }

    /// `rate` bytes per second over `idleTimeout`, at least 1; 1 without either.
    static func sendProgressBytes(minimumSendRate rate: Int?, idleTimeout: Duration?) -> Int {
        guard let rate, let idleTimeout else { return 1 }
        let bytes = Double(rate) * Double(idleTimeout.nanosecondsClamped) / 1e9
        return max(1, Int(min(bytes, Double(Int.max / 2))))
    }

    /// Reserves the right to keep one provided buffer of `ring` in a write queue until its send
    /// completes. At most a quarter of a ring's buffers may be held so: a send to a peer that does
    /// not read never completes, and without a cap a few such peers would hold every buffer of
    /// the ring and starve every other connection on it. Beyond the budget, received bytes are
    /// copied and the buffer goes back at once. Balance with ``unpinBuffer(onRing:)``.
    func pinBuffer(onRing ring: Int) -> Bool {
        let pinned = pinnedBuffers[ring]
        var current = pinned.value.load(ordering: .relaxed)
        while current < pinnedBufferBudget {
            let (exchanged, original) = pinned.value.weakCompareExchange(
                expected: current, desired: current + 1, successOrdering: .relaxed, failureOrdering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// A buffer reserved with ``pinBuffer(onRing:)`` left its write queue.
    func unpinBuffer(onRing ring: Int) {
        pinnedBuffers[ring].value.subtract(1, ordering: .relaxed)
    }

    /// Frees the pooled buffers that stayed idle since the last sweep (what a burst of
    /// connections or of non-reading peers left behind), and once more than 4 MiB were freed,
    /// asks the allocator to give the free pages back to the system. The sweep calls this.
    func returnIdleMemory() {
        let freed =
            writeChunks.trimIdle() * writeChunks.bufferSize
            + receiveContexts.trimIdle() * receiveContexts.bufferSize
        bookkeepingContexts.trimIdle()
        let total = freedSinceMemoryReturn.add(freed, ordering: .relaxed).newValue
        guard total >= 4 << 20 else { return }
        freedSinceMemoryReturn.store(0, ordering: .relaxed)
        SystemInfo.returnFreeMemoryToSystem()
    }

    /// Remembers a connection that found its ring out of provided buffers, to wake it when one
    /// comes back; returns false, and leaves it out, when a buffer is free already: the
    /// connection receives again at once.
    ///
    /// The buffers its own receive filled may all be back by now: released by its handler on
    /// this worker, for the worker's next pass through the ring's lock, before it was listed. No
    /// later release would wake it, and it waited for the sweep (a second): a single client
    /// uploading faster than the handler returns buffers stalled that long at each exhaustion.
    func waitForBuffers(_ connection: Connection) -> Bool {
        let ring = connection.id.ring
        starved[ring].withLock { $0.append(connection) }
        starvedCount.add(1, ordering: .releasing)
        guard port.hasFreeProvidedBuffer(onRing: ring) else { return true }
        // Not listed any more: a release woke it meanwhile (its wake-up is on the way).
        return !unlist(connection)
    }

    /// Gives a connection's provided `buffer` of `ring` back and wakes one connection waiting
    /// for a buffer of that ring. The wake-up is a completion posted on the connection's handle,
    /// so it runs serialised with the rest. While any connection waits, the buffer goes back at
    /// once (`ReceivedBuffer.releaseNow()`), so the woken one finds it in the ring; otherwise a
    /// buffer released on a worker goes back with the worker's next dequeue, or before the ring
    /// enters the kernel from that thread.
    func release(_ buffer: ReceivedBuffer, onRing ring: Int) {
        guard starvedCount.load(ordering: .relaxed) > 0 else { return buffer.release() }
        buffer.releaseNow()
        // One that closed meanwhile cannot take the wake-up (the post fails): the next one does.
        while let connection = starved[ring].withLock({ $0.popLast() }) {
            starvedCount.subtract(1, ordering: .relaxed)
            if wake(connection) { return }
        }
    }

    /// Tells `connection` that buffers are back (a completion on its handle); returns whether the
    /// post succeeded (it fails once the connection is closed).
    @discardableResult
    private func wake(_ connection: Connection) -> Bool {
        (try? port.post(handle: connection.handle, value: ServerCore.ConnectionCommand.buffersAvailable.rawValue))
            != nil
    }

    /// Forgets a connection that finished while it waited for buffers (its entry would keep it
    /// alive).
    func stopWaitingForBuffers(_ connection: Connection) {
        guard starvedCount.load(ordering: .relaxed) > 0 else { return }
        unlist(connection)
    }

    /// Takes `connection` off its ring's list of connections waiting for buffers; returns
    /// whether it was listed.
    @discardableResult
    private func unlist(_ connection: Connection) -> Bool {
        let removed = starved[connection.id.ring].withLock { list in
            guard let index = list.lastIndex(where: { $0 === connection }) else { return false }
            list.remove(at: index)
            return true
        }
        if removed { starvedCount.subtract(1, ordering: .relaxed) }
        return removed
    }

    /// Wakes every connection waiting for buffers (the idle sweep's safety net).
    func wakeAllWaitingForBuffers() {
        guard starvedCount.load(ordering: .relaxed) > 0 else { return }
        for ring in starved.indices {
            for connection in starved[ring].withLock({ list -> [Connection] in
                defer { list.removeAll() }; return list
            }) {
                starvedCount.subtract(1, ordering: .relaxed)
                wake(connection)
            }
        }
    }

    func finishedWriting(_ context: IOContext, on connection: Connection) {
        finishedWritingCallback(connection, context)
    }
}

/// A per-ring count of provided buffers held in write queues.
final class PinnedBufferCount: Sendable {
    let value = Atomic<Int>(0)
}
