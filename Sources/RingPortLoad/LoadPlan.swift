import RingPort

/// What one `ringport load` run does: the target, the shape of the load, and its time limits.
///
/// A validated value built by ``LoadCommand`` on the main thread and then only read, by every
/// load thread (it is `Sendable`).
package struct LoadPlan: Sendable {
    /// The most connections a run may open (echo_load's limit).
    package static let maximumConnections = 20_000
    /// The most messages in flight per connection (echo_load's limit).
    package static let maximumDepth = 4096
    /// The largest message (echo_load's limit: 64 MiB).
    package static let maximumMessageSize = 64 << 20
    /// The most worker threads (each with a ring of its own).
    package static let maximumWorkers = 64
    /// Extra seconds the watchdog allows after the end of the measured window (closing the
    /// connections and the port) before it ends the process.
    package static let teardownAllowance: Duration = .seconds(5)

    /// The echo server.
    package var address: SocketAddress
    /// Connections opened before the clock starts, all kept busy until the end.
    package var connections: Int
    /// Bytes per message.
    package var messageSize: Int
    /// Messages in flight per connection (1: ping-pong).
    package var depth: Int
    /// Warm-up: messages completing then are not counted.
    package var warmup: Duration
    /// The measured window.
    package var duration: Duration
    /// Worker threads, each dequeuing from a ring of its own.
    package var workers: Int
    /// Connecting fails when no connection could be established for this long.
    package var connectTimeout: Duration
    /// How echoes are received.
    package var receiveMode: ReceiveMode
    /// What performs the generator's I/O.
    package var backend: CompletionPort.Backend

    /// A plan; ``LoadCommand`` validates the values against the maximums first.
    package init(
        address: SocketAddress, connections: Int, messageSize: Int, depth: Int, warmup: Duration, duration: Duration,
        workers: Int, connectTimeout: Duration, receiveMode: ReceiveMode, backend: CompletionPort.Backend = .automatic
    ) {
        self.address = address
        self.connections = connections
        self.messageSize = messageSize
        self.depth = depth
        self.warmup = warmup
        self.duration = duration
        self.workers = workers
        self.connectTimeout = connectTimeout
        self.receiveMode = receiveMode
        self.backend = backend
    }

    /// How a load connection receives.
    package enum ReceiveMode: String, Sendable {
        /// One multishot receive per connection into the port's provided buffers (Linux 6.0+):
        /// no submission per message.
        case multishot
        /// One receive per completion into the connection's own buffer.
        case single
    }

    /// The longest the connect phase may last in total, however slowly the server accepts.
    package var connectPhaseLimit: Duration {
        max(connectTimeout, .seconds(60))
    }

    /// Bytes of one connection's send buffer and of its receive buffer: everything a
    /// connection may have in flight (`messageSize × depth`), capped so that the buffers of all
    /// connections stay within about 64 MiB per direction (at least 4 KiB, at most 256 KiB each).
    /// A larger window is sent and received in several operations.
    var bufferSize: Int {
        let cap = max(4096, min(256 << 10, (64 << 20) / connections))
        return min(messageSize * depth, cap)
    }

    /// Provided buffers for multishot receives, per ring: buffers of ``bufferSize`` bytes (at
    /// most 64 KiB), about two per connection of the ring so that a whole round of echoes finds
    /// buffers, and at most about 256 MiB in all (a power of two, 64...32768).
    var providedBuffers: CompletionPort.ProvidedBuffers {
        let size = min(bufferSize, 64 << 10)
        let perRing = (connections + workers - 1) / workers
        var count = 64
        while count < 2 * perRing && count < 32768 && (2 * count) * size * workers <= 256 << 20 { count *= 2 }
        return CompletionPort.ProvidedBuffers(count: count, size: size)
    }

    /// Whether the target is a loopback address (127.0.0.0/8, ::1 or ::ffff:127.x.y.z).
    package var targetIsLoopback: Bool {
        let bytes = address.addressBytes
        switch address.family {
        case .ipv4:
            return bytes.first == 127
        case .ipv6:
            if bytes == [UInt8](repeating: 0, count: 15) + [1] { return true }
            return bytes.prefix(12) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] && bytes[12] == 127
        }
    }
}
