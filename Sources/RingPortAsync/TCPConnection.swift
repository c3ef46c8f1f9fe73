import Glibc
import RingPort

import struct NIOCore.ByteBuffer

/// A TCP connection on an ``AsyncPort``: received bytes as an `AsyncSequence` of `ByteBuffer`s
/// (``inbound``), sent bytes through a writer (``outbound``), in the shape of SwiftNIO's
/// `NIOAsyncChannel`.
///
/// Get one from a ``TCPListener`` or from ``connect(to:on:)``.
///
/// ## Receiving
/// The connection keeps one receive armed (a multishot receive into the port's provided
/// buffers where the kernel has them) while its consumer keeps up; every arrival becomes one
/// `ByteBuffer`, in order. With provided buffers an idle connection holds no receive buffer (on
/// the epoll backend it keeps one of ``AsyncPort/Configuration/receiveBufferSize`` bytes). When
/// the consumer lags, received bytes are buffered up to
/// ``AsyncPort/Configuration/inboundHighWatermark``; then the connection stops receiving (the
/// peer's sends fill the socket buffers and then block) until the consumer has taken them below
/// half of it. The sequence ends when the peer shuts
/// its side down (after every byte it sent), and throws when the connection failed or was
/// closed.
///
/// ## Sending
/// ``Outbound/write(_:)`` queues a buffer and returns; the bytes are sent from the buffer's
/// own storage (no copy), queued buffers leave in one gathered send, and the connection keeps
/// each buffer until the kernel has sent it. When
/// ``AsyncPort/Configuration/outboundHighWatermark`` bytes are queued (the peer does not read),
/// a write waits until the queue has drained to half of it. ``Outbound/finish()`` sends the
/// rest and shuts the write side down (half-close): the peer reads an end of stream, and this
/// side can go on receiving.
///
/// ## Thread-safety
/// All members may be called from any task. One task reads at a time, and one write waits for
/// room at a time; a second concurrent one, or any write while one waits, throws
/// `RingPortError.Code.contextInFlight`.
///
/// ## Cancellation
/// A read cancelled while it waits throws `CancellationError`; the receive stays armed and
/// bytes that arrive later are returned by the next read: nothing is lost. A write cancelled
/// while it waits for room throws `CancellationError` and has queued nothing; what was queued
/// before is still sent. In ``executeThenClose(_:)`` one cancellation handler covers every read
/// of the calling task (cheaper than one per read); once that task is cancelled, its reads
/// return what is buffered and throw `CancellationError` instead of waiting.
///
/// ## Errors
/// `RingPortError`: `RingPortError.Code.systemCallFailed` with the kernel's `errno` (e.g.
/// `ECONNRESET`, `EPIPE`) when a receive or send failed, `RingPortError.Code.handleClosed`
/// after ``close()`` or the port's shutdown; or `CancellationError`. A failed send fails the
/// outbound side only (bytes already received stay readable); a failed receive the inbound
/// side only.
///
/// ## Lifetime
/// ``close()`` closes the socket (queued sends are dropped); dropping the last reference
/// closes it too. Prefer ``executeThenClose(_:)``, which closes when its body returns.
public final class TCPConnection: Sendable {
    /// The peer's address, when known.
    public var peerAddress: SocketAddress? {
        handle.peerAddress
    }
    /// The port the connection lives on.
    public var asyncPort: AsyncPort {
        streams.asyncPort
    }
    var handle: IOHandle {
        streams.handle
    }
    // The connection stores only its streams (its handle and port are theirs): every idle
    // connection holds one of these objects. A separate object from the streams, which operations
    // in flight hold: dropping the last reference to the connection closes it.
    @usableFromInline let streams: ConnectionStreams

    /// Wraps a connected socket (the connection owns it from now on, also when this throws:
    /// then it is closed).
    init(descriptor: Int32, peerAddress: SocketAddress?, on asyncPort: AsyncPort) throws(RingPortError) {
        let handle = try asyncPort.associate(descriptor: descriptor, peerAddress: peerAddress, for: "connection")
        streams = ConnectionStreams(handle: handle, on: asyncPort)
        asyncPort.memorySweep.connectionOpened()
    }

    deinit {
        asyncPort.memorySweep.connectionClosed()
        // Operations in flight end as cancelled; the streams give their receive context back to
        // its pool when they go themselves (an iterator or writer may outlive the connection,
        // and an operation in flight keeps them until its completion).
        asyncPort.port.close(handle)
    }

    /// Connects to `address` (io_uring `CONNECT`) and returns the connection, with
    /// `TCP_NODELAY` set.
    ///
    /// - Throws: `RingPortError.Code.systemCallFailed` with the `errno` of the failure (e.g.
    ///   `ECONNREFUSED`); `RingPortError.Code.portClosed` after ``AsyncPort/shutdown()``;
    ///   `CancellationError` when the task was cancelled first (the socket is closed).
    public static func connect(to address: SocketAddress, on asyncPort: AsyncPort) async throws -> TCPConnection {
        try asyncPort.checkRunning("connect to \(address)")
        let descriptor = try TCPSocket.makeSocket(family: address.protocolFamily)
        // Set on the socket before it is the port's: afterwards its number is only good while
        // the handle is open, which a shutdown's sweep may end at any moment.
        try? TCPSocket.setNoDelay(descriptor)
        let connection = try TCPConnection(descriptor: descriptor, peerAddress: address, on: asyncPort)
        // The connect's context holds the address for the kernel in its scratch memory.
        let slot = OperationSlot(port: asyncPort.port, context: asyncPort.bareContexts.take())
        defer { if !slot.context.isInFlight { asyncPort.bareContexts.recycle(slot.context) } }
        try slot.claim("connect")
        defer { slot.relinquish() }
        let handle = connection.handle
        let outcome = await slot.perform { context throws(RingPortError) in
            try asyncPort.port.connect(handle, to: address, context: context)
        }
        do {
            let (_, cancelRequested) = try outcome.completionWithoutError(
                closed: "connect to \(address)", failed: "connect to \(address)")
            // Connected, but nobody wants the connection any more.
            if cancelRequested { throw CancellationError() }
        } catch {
            connection.close()
            throw error
        }
        return connection
    }

    /// Whether ``close()`` was called (or the port shut down).
    public var isClosed: Bool {
        handle.isClosed
    }

    /// Closes the connection: ends its receive and drops its queued sends (a waiting read or
    /// write throws `RingPortError.Code.handleClosed`), and closes the socket once the kernel is
    /// done with them. Idempotent; does not wait.
    @inlinable
    public func close() {
        closeHandle()
    }

    @usableFromInline
    func closeHandle() {
        asyncPort.port.close(handle)
    }

    /// Runs `body` with the connection's inbound sequence and outbound writer, then closes the
    /// connection, also when `body` throws.
    ///
    /// The calling task's reads in `body` share one cancellation handler, added when `body`
    /// starts and removed when it returns, instead of adding and removing one per read; reads
    /// by other tasks (child tasks of `body`, for example) keep their own.
    ///
    /// Inlinable, like the inbound iterator's `next()` and the outbound `write(_:)`: their frames
    /// join the caller's, so that a connection's task needs less memory while it waits.
    @inlinable
    public func executeThenClose<Result>(
        _ body: (_ inbound: Inbound, _ outbound: Outbound) async throws -> Result
    ) async throws -> Result {
        defer { close() }
        let scope = streams.beginCancellationScope()
        defer { streams.endCancellationScope(scope) }
        return try await body(inbound, outbound)
    }

    // MARK: Reading

    /// The received bytes, one `ByteBuffer` per arrival, ending when the peer shut its side
    /// down. Iterate it from one task at a time.
    @inlinable
    public var inbound: Inbound {
        Inbound(streams: streams)
    }

    /// The next received bytes (at least one byte), waiting until some arrive; nil once the peer
    /// shut its side down and every byte was read. The same as the next element of
    /// ``inbound``.
    @inlinable
    nonisolated(nonsending) public func read() async throws -> ByteBuffer? {
        try await streams.next()
    }

    /// The received bytes of a ``TCPConnection``: an `AsyncSequence` of `ByteBuffer`s with
    /// backpressure. See ``TCPConnection/inbound``.
    public struct Inbound: AsyncSequence, Sendable {
        /// Bytes that arrived together, in order.
        public typealias Element = ByteBuffer
        /// `RingPortError` or `CancellationError`.
        public typealias Failure = any Error

        @usableFromInline let streams: ConnectionStreams

        @usableFromInline
        init(streams: ConnectionStreams) {
            self.streams = streams
        }

        /// Bytes received and not read yet (at most about the inbound high watermark).
        public var bufferedByteCount: Int {
            streams.bufferedByteCount
        }

        /// An iterator over the received bytes.
        @inlinable
        public func makeAsyncIterator() -> AsyncIterator {
            AsyncIterator(streams: streams)
        }

        /// The iterator of ``Inbound``; see ``TCPConnection/read()``.
        public struct AsyncIterator: AsyncIteratorProtocol {
            @usableFromInline let streams: ConnectionStreams

            @usableFromInline
            init(streams: ConnectionStreams) {
                self.streams = streams
            }

            /// The next received bytes, or nil once the peer shut its side down.
            @inlinable
            nonisolated(nonsending) public mutating func next() async throws -> ByteBuffer? {
                try await streams.next()
            }

            /// The next received bytes, or nil once the peer shut its side down; what a
            /// `for try await` loop calls, on the loop's own isolation.
            ///
            /// `nonisolated(nonsending)` with a plain `actor` parameter rather than an `isolated`
            /// one: both run on the loop's isolation, but an `isolated` parameter that is nil (a
            /// loop in a nonisolated task) switched to the generic executor on every call, a
            /// `swift_task_switch` that looks the task's executor preference up under its status
            /// lock — one of five per echoed message in `ringport async-echo`, four without it.
            @inlinable
            nonisolated(nonsending) public mutating func next(
                isolation actor: (any Actor)?
            ) async throws(any Error)
                -> ByteBuffer?
            {
                try await streams.next()
            }
        }
    }

    // MARK: Writing

    /// The writer of the connection's outgoing bytes.
    @inlinable
    public var outbound: Outbound {
        Outbound(streams: streams)
    }

    /// Queues `buffer` for sending; see ``Outbound/write(_:)``.
    @inlinable
    nonisolated(nonsending) public func write(_ buffer: consuming ByteBuffer) async throws {
        try await streams.write(buffer)
    }

    /// Copies `bytes` into a new buffer and queues it for sending; see ``Outbound/write(_:)``.
    public func write(_ bytes: some Sequence<UInt8>) async throws {
        try await streams.write(ByteBuffer(bytes: bytes))
    }

    /// Sends what is queued, then shuts the write side down; see ``Outbound/finish()``.
    public func shutdownOutput() async throws {
        try await streams.finish()
    }

    /// The writer of a ``TCPConnection``'s outgoing bytes, with backpressure. See
    /// ``TCPConnection/outbound``.
    public struct Outbound: Sendable {
        @usableFromInline let streams: ConnectionStreams

        @usableFromInline
        init(streams: ConnectionStreams) {
            self.streams = streams
        }

        /// Bytes written and not sent yet.
        public var queuedByteCount: Int {
            streams.queuedByteCount
        }

        /// Queues `buffer` for sending and returns; waits first, without queuing, while the
        /// outbound high watermark's worth of bytes is queued (the peer does not read). The
        /// bytes are sent from the buffer's storage, which the connection keeps until they are
        /// sent: the caller's copy may be changed meanwhile (it copies on write). Consumes
        /// `buffer`: pass the last copy (`write(consume buffer)`) and it moves into the queue
        /// without a retain of its storage. Runs on the caller's isolation.
        ///
        /// - Throws: the `RingPortError` that failed an earlier send (e.g. `ECONNRESET`,
        ///   `EPIPE`), `RingPortError.Code.handleClosed` once the connection is closed,
        ///   `RingPortError.Code.invalidArgument` after ``finish()``,
        ///   `RingPortError.Code.contextInFlight` while another task's write waits for room
        ///   (nothing is queued ahead of it), `CancellationError` when cancelled while waiting
        ///   (then nothing was queued).
        @inlinable
        nonisolated(nonsending) public func write(_ buffer: consuming ByteBuffer) async throws {
            try await streams.write(buffer)
        }

        /// Queues every buffer of `buffers`, in order, as ``write(_:)`` does.
        public func write(contentsOf buffers: some Sequence<ByteBuffer>) async throws {
            for buffer in buffers { try await streams.write(buffer) }
        }

        /// Sends what is queued, then shuts the write side down (`shutdown(SHUT_WR)`): the peer
        /// reads an end of stream; receiving goes on. Returns when the last byte was handed to
        /// the kernel and the side was shut. Later writes throw. Once it returned, calling it
        /// again returns at once.
        ///
        /// - Throws: the error that failed a send; `RingPortError.Code.contextInFlight` while
        ///   another task's write waits for room, or another `finish()` waits for the queue to
        ///   drain (nothing changed); `CancellationError` when cancelled while waiting (the
        ///   shutdown still happens once the queue is sent).
        public func finish() async throws {
            try await streams.finish()
        }
    }
}
