import Glibc
import RingPort
import SystemPackage

/// A TCP connection on an ``AsyncPort``, read and written with `async` calls.
///
/// Get one from a ``TCPListener`` or from ``connect(to:on:)``. Every read and write posts an
/// operation on the completion port with one of the connection's two per-I/O contexts (a
/// receive buffer and a send buffer of ``AsyncPort/Configuration`` sizes, owned by the
/// connection); the port owns that context until the operation's completion is dequeued, and
/// the call returns only after that — also when it throws.
///
/// ## Thread-safety
/// All methods may be called from any task. One read and one write may be in progress at the
/// same time (e.g. a reading task and a writing task); a second concurrent read, or write,
/// throws `RingPortError.Code.contextInFlight`.
///
/// ## Buffer ownership
/// A read receives into the connection's receive buffer and copies into the caller's memory
/// (or a new array) before it returns; bytes the caller had no room for stay buffered for the
/// next read. A write copies the caller's bytes into the send buffer, chunk by chunk, and
/// returns when the last byte was handed to the kernel: the caller's memory is read only during
/// the call and may be reused as soon as it returns.
///
/// ## Cancellation
/// Cancelling the task of a pending read or write cancels its io_uring operation; the call
/// waits for the operation's completion and throws `CancellationError`.
/// - A read cancelled after its bytes arrived (the kernel completed it before the
///   cancellation) does not lose them: they stay buffered and the next read returns them; an
///   end of stream that arrived the same way is returned by the next read too. The connection
///   stays usable.
/// - A write cancelled part-way may have sent a prefix of its bytes (it does not say how many):
///   the stream is then in an unknown state, and the connection should be closed.
///
/// ## Errors
/// Reads and writes throw `RingPortError`: `RingPortError.Code.systemCallFailed` with the
/// kernel's `errno` (e.g. `ECONNRESET`, `EPIPE`) when the operation failed,
/// `RingPortError.Code.handleClosed` after ``close()`` (also for an operation pending when
/// the connection was closed, or when the ``AsyncPort`` shut down); or `CancellationError`.
///
/// ## Lifetime
/// ``close()`` closes the socket; dropping the last reference closes it too. The buffers go
/// back to the port's pools when the connection is freed.
public final class TCPConnection: Sendable {
    /// The peer's address, when known.
    public let peerAddress: SocketAddress?
    /// The port the connection lives on.
    public let asyncPort: AsyncPort
    let handle: IOHandle
    private let reader: OperationSlot
    private let writer: OperationSlot

    /// Wraps a connected socket (the connection owns it from now on, also when this throws:
    /// then it is closed).
    convenience init(descriptor: Int32, peerAddress: SocketAddress?, on asyncPort: AsyncPort) throws(RingPortError) {
        let handle: IOHandle
        do {
            handle = try asyncPort.port.associate(descriptor: descriptor, peerAddress: peerAddress)
        } catch {
            SystemCall.close(descriptor)
            throw error
        }
        self.init(handle: handle, peerAddress: peerAddress, on: asyncPort)
    }

    private init(handle: IOHandle, peerAddress: SocketAddress?, on asyncPort: AsyncPort) {
        self.handle = handle
        self.peerAddress = peerAddress
        self.asyncPort = asyncPort
        reader = OperationSlot(port: asyncPort.port, context: asyncPort.receiveContexts.take())
        writer = OperationSlot(port: asyncPort.port, context: asyncPort.sendContexts.take())
    }

    deinit {
        asyncPort.port.close(handle)
        // No operation is in flight: each one keeps the connection alive until its completion.
        // The checks only guard against recycling a context the port still holds.
        if !reader.context.isInFlight { asyncPort.receiveContexts.recycle(reader.context) }
        if !writer.context.isInFlight { asyncPort.sendContexts.recycle(writer.context) }
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
        let connection = try TCPConnection(descriptor: descriptor, peerAddress: address, on: asyncPort)
        // The receive context's scratch memory holds the address for the kernel.
        let slot = connection.reader
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
        try? TCPSocket.setNoDelay(handle.descriptor)
        return connection
    }

    /// Whether ``close()`` was called (or the port shut down).
    public var isClosed: Bool {
        handle.isClosed
    }

    /// Closes the connection: cancels its pending read and write (they throw
    /// `RingPortError.Code.handleClosed`) and closes the socket once they are done with it.
    /// Idempotent; does not wait.
    public func close() {
        asyncPort.port.close(handle)
    }

    // MARK: Reading

    /// Reads what is available, at most `buffer.count` bytes, into `buffer`; waits until at
    /// least one byte arrived. Returns the number of bytes, or 0 at end of stream (the peer
    /// closed its side).
    ///
    /// `buffer` is written only before the call returns.
    public func read(into buffer: UnsafeMutableRawBufferPointer) async throws -> Int {
        guard buffer.count > 0 else {
            throw RingPortError(.invalidArgument, operation: "read into an empty buffer")
        }
        try reader.claim("read")
        defer { reader.relinquish() }
        guard try await fillReceiveBuffer() else { return 0 }
        let count = min(buffer.count, reader.bufferedEnd - reader.bufferedStart)
        let start = reader.bufferedStart
        reader.context.withUnsafeBytes { received in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: received[start..<(start + count)]))
        }
        reader.bufferedStart += count
        return count
    }

    /// Reads what is available, at most `maximumCount` bytes; waits until at least one byte
    /// arrived. Returns nil at end of stream (the peer closed its side).
    public func read(maximumCount: Int = .max) async throws -> [UInt8]? {
        guard maximumCount > 0 else {
            throw RingPortError(.invalidArgument, operation: "read of at most \(maximumCount) bytes")
        }
        try reader.claim("read")
        defer { reader.relinquish() }
        guard try await fillReceiveBuffer() else { return nil }
        let count = min(maximumCount, reader.bufferedEnd - reader.bufferedStart)
        let bytes = reader.context.bytes(in: reader.bufferedStart..<(reader.bufferedStart + count))
        reader.bufferedStart += count
        return bytes
    }

    /// Makes sure bytes are buffered, receiving if none are; false at end of stream. The
    /// caller holds the reader's claim.
    private func fillReceiveBuffer() async throws -> Bool {
        if reader.bufferedStart < reader.bufferedEnd { return true }
        if reader.endOfStream { return false }
        let handle = self.handle
        let port = asyncPort.port
        let outcome = await reader.perform { context throws(RingPortError) in
            try port.read(handle, into: context)
        }
        let (completion, cancelRequested) = try outcome.completionWithoutError(
            closed: "read on a closed connection", failed: "recv from \(peerDescription)")
        let count = completion.bytesTransferred
        if count == 0 {
            reader.endOfStream = true
        } else {
            reader.bufferedStart = 0
            reader.bufferedEnd = count
        }
        // The bytes (or the end of stream) arrived before the cancellation took effect:
        // they stay buffered for the next read.
        if cancelRequested { throw CancellationError() }
        return count > 0
    }

    // MARK: Writing

    /// Sends all of `bytes`, finishing short sends; returns when the last byte was handed to
    /// the kernel. `bytes` is read only during the call.
    public func write(_ bytes: some Collection<UInt8>) async throws {
        try writer.claim("write")
        defer { writer.relinquish() }
        let capacity = writer.context.capacity
        var index = bytes.startIndex
        while index != bytes.endIndex {
            let end = bytes.index(index, offsetBy: capacity, limitedBy: bytes.endIndex) ?? bytes.endIndex
            let count = writer.context.copyBytes(from: bytes[index..<end])
            try await sendSendBuffer(count: count)
            index = end
        }
    }

    /// Sends all of `bytes`; see ``write(_:)-(Collection<UInt8>)``.
    public func write(_ bytes: [UInt8]) async throws {
        try await write(count: bytes.count) { range, destination in
            bytes.withUnsafeBytes { source in
                destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[range]))
            }
        }
    }

    /// Sends all of the bytes `bytes` points to; see ``write(_:)-(Collection<UInt8>)``. The
    /// memory must stay valid until the call returns; it is read only during the call.
    public func write(_ bytes: UnsafeRawBufferPointer) async throws {
        try await write(count: bytes.count) { range, destination in
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[range]))
        }
    }

    /// Sends `count` bytes that `copy` puts into the send buffer a chunk at a time (the chunk's
    /// range in the caller's bytes, and where to put it).
    private func write(
        count: Int, copy: (Range<Int>, UnsafeMutableRawBufferPointer) -> Void
    ) async throws {
        try writer.claim("write")
        defer { writer.relinquish() }
        let capacity = writer.context.capacity
        var start = 0
        while start < count {
            let chunk = start..<Swift.min(count, start + capacity)
            writer.context.withUnsafeMutableBytes { buffer in
                copy(chunk, UnsafeMutableRawBufferPointer(rebasing: buffer[0..<chunk.count]))
            }
            try await sendSendBuffer(count: chunk.count)
            start = chunk.upperBound
        }
    }

    /// Sends the first `count` bytes of the send buffer. The caller holds the writer's claim.
    private func sendSendBuffer(count: Int) async throws {
        let handle = self.handle
        let port = asyncPort.port
        var offset = 0
        while offset < count {
            let range = offset..<count
            let outcome = await writer.perform { context throws(RingPortError) in
                try port.write(handle, from: context, range: range)
            }
            let (completion, cancelRequested) = try outcome.completionWithoutError(
                closed: "write on a closed connection", failed: "send to \(peerDescription)")
            if cancelRequested { throw CancellationError() }
            guard completion.bytesTransferred > 0 else {
                throw RingPortError(
                    .systemCallFailed, operation: "send to \(peerDescription) made no progress", errno: .brokenPipe)
            }
            offset += completion.bytesTransferred
        }
    }

    private var peerDescription: String {
        peerAddress.map { "\($0)" } ?? "the peer"
    }
}
