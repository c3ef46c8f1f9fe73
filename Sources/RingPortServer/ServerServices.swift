import Logging
import RingPort

#if canImport(Glibc)
import Glibc
#endif

/// What connections share with their server: the port, the pools, the limits, the counters.
///
/// Immutable after creation except for the pools and counters, which are thread-safe.
final class ServerServices: Sendable {
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
    let idleTimeoutNanoseconds: UInt64
    let idleTimeoutCountsReceivedBytes: Bool
    /// Calls the handler's `connection(_:finishedWriting:)` (set by the generic server).
    private let finishedWritingCallback: @Sendable (Connection, IOContext) -> Void

    init(
        port: CompletionPort, configuration: TCPServer.Configuration, features: IOURingFeatures, counters: ServerCounters,
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
        idleTimeoutNanoseconds = configuration.idleTimeout.map { UInt64($0.components.seconds) * 1_000_000_000
            + UInt64($0.components.attoseconds / 1_000_000_000) } ?? .max
        idleTimeoutCountsReceivedBytes = configuration.idleTimeoutCountsReceivedBytes
        finishedWritingCallback = finishedWriting
    }

    func finishedWriting(_ context: IOContext, on connection: Connection) {
        finishedWritingCallback(connection, context)
    }

    /// Monotonic nanoseconds.
    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}
