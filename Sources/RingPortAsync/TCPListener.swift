import Glibc
import Logging
import RingPort
import SystemPackage

/// A listening TCP socket on an ``AsyncPort`` whose accepted connections are an
/// `AsyncSequence` (``connections``), or come one by one from ``accept()``.
///
/// Each accept is one io_uring `ACCEPT` posted when the sequence's iterator (or ``accept()``)
/// asks for the next connection, with the listener's per-I/O context, which the port owns
/// until the accept completes: connections the application does not ask for wait in the
/// listen backlog, not in memory.
///
/// ## Thread-safety
/// All methods may be called from any task. One accept at a time: a second concurrent
/// ``accept()`` (or a second iterator in use at the same time) throws
/// `RingPortError.Code.contextInFlight`.
///
/// ## Ending
/// ``close()`` (or ``AsyncPort/shutdown()``) stops listening: the pending accept ends, the
/// sequence finishes (its iterator returns nil) and ``accept()`` returns nil. Connections
/// already accepted are not affected. Dropping the last reference closes the listener too.
///
/// ## Cancellation
/// Cancelling the task of a pending accept cancels its io_uring operation and throws
/// `CancellationError`; a connection the kernel accepted before the cancellation took effect is
/// kept for the next accept (or closed with the listener), never leaked.
public final class TCPListener: Sendable {
    /// The address the listener is bound to (with the port the kernel chose for port 0).
    public let localAddress: SocketAddress
    /// The port the listener and its connections live on.
    public let asyncPort: AsyncPort
    private let handle: IOHandle
    private let acceptor: OperationSlot
    /// How long the ``connections`` iterator waits after a failed accept.
    let backoff = AcceptBackoff()
    /// A connection accepted by an accept whose task was cancelled, for the next accept; and
    /// whether the listener is closed (then it is closed instead of kept).
    private let leftover = LockedValue(Leftover())

    private struct Leftover {
        var closed = false
        var descriptor: Int32?
        var peerAddress: SocketAddress?
    }

    /// Creates a listening socket on `address` and associates it with `asyncPort`.
    ///
    /// - Throws: `RingPortError.Code.systemCallFailed` when `socket`, `bind` or `listen` fail
    ///   (e.g. `EADDRINUSE`); `RingPortError.Code.portClosed` after ``AsyncPort/shutdown()``.
    public static func bind(
        to address: SocketAddress, on asyncPort: AsyncPort, options: TCPSocket.ListenerOptions = .init()
    ) throws(RingPortError) -> TCPListener {
        try asyncPort.checkRunning("listen on \(address)")
        let descriptor = try TCPSocket.makeListener(address: address, options: options)
        let localAddress: SocketAddress
        let handle: IOHandle
        do {
            localAddress = try TCPSocket.localAddress(of: descriptor)
        } catch {
            SystemCall.close(descriptor)
            throw error
        }
        handle = try asyncPort.associate(descriptor: descriptor, peerAddress: nil, for: "listen on \(address)")
        return TCPListener(handle: handle, localAddress: localAddress, asyncPort: asyncPort)
    }

    private init(handle: IOHandle, localAddress: SocketAddress, asyncPort: AsyncPort) {
        self.handle = handle
        self.localAddress = localAddress
        self.asyncPort = asyncPort
        acceptor = OperationSlot(port: asyncPort.port, context: asyncPort.bareContexts.take())
    }

    deinit {
        close()
        if !acceptor.context.isInFlight { asyncPort.bareContexts.recycle(acceptor.context) }
    }

    /// Stops listening: the pending accept ends and the sequence finishes. Idempotent; does not
    /// wait.
    public func close() {
        let descriptor = leftover.withLock { leftover -> Int32? in
            leftover.closed = true
            defer { leftover.descriptor = nil }
            return leftover.descriptor
        }
        if let descriptor { SystemCall.close(descriptor) }
        asyncPort.port.close(handle)
    }

    /// Whether ``close()`` was called (or the port shut down).
    public var isClosed: Bool {
        handle.isClosed
    }

    /// Waits for the next connection and returns it, with `TCP_NODELAY` set; nil once the
    /// listener is closed.
    ///
    /// - Throws: `RingPortError.Code.systemCallFailed` with the accept's `errno` (e.g.
    ///   `EMFILE` when the process is out of descriptors: the listener stays usable, try again
    ///   later; ``connections`` does that by itself); `CancellationError`.
    public func accept() async throws -> TCPConnection? {
        try acceptor.claim("accept")
        defer { acceptor.relinquish() }
        while true {
            // Closed first: a connection kept from a cancelled accept is not handed out by a
            // closed listener (`close()` closes it, and so does the shutdown's sweep, here).
            if handle.isClosed {
                if let (descriptor, _) = takeLeftover() { SystemCall.close(descriptor) }
                return nil
            }
            if let (descriptor, peerAddress) = takeLeftover() {
                return try TCPListener.connection(descriptor, peerAddress, on: asyncPort)
            }
            let handle = self.handle
            let port = asyncPort.port
            let outcome = await acceptor.perform { context throws(RingPortError) in
                try port.accept(on: handle, context: context)
            }
            switch outcome {
            case .cancelledBeforePosting:
                throw CancellationError()
            case .notPosted(let error):
                if error.code == .handleClosed || error.code == .portClosed { return nil }
                throw error
            case .completed(let completion, let cancelRequested):
                if let descriptor = completion.acceptedDescriptor {
                    backoff.succeeded()
                    let peerAddress = acceptor.context.acceptedPeerAddress
                    if cancelRequested {
                        keepLeftover(descriptor, peerAddress)
                        throw CancellationError()
                    }
                    if handle.isClosed {
                        SystemCall.close(descriptor)
                        return nil
                    }
                    return try TCPListener.connection(descriptor, peerAddress, on: asyncPort)
                }
                let error = completion.error ?? .ioError
                if completion.isCancelled {
                    if cancelRequested { throw CancellationError() }
                    return nil  // the listener was closed
                }
                // The connection died in the backlog (or the like): not the listener's problem.
                if AcceptBackoff.isConnectionError(error) { continue }
                throw RingPortError(.systemCallFailed, operation: "accept on \(localAddress)", errno: error)
            }
        }
    }

    /// The connection of an accepted descriptor; nil when the port shut down meanwhile (the
    /// descriptor is closed), as for a closed listener.
    private static func connection(
        _ descriptor: Int32, _ peerAddress: SocketAddress?, on asyncPort: AsyncPort
    ) throws(RingPortError) -> TCPConnection? {
        try? TCPSocket.setNoDelay(descriptor)
        do {
            return try TCPConnection(descriptor: descriptor, peerAddress: peerAddress, on: asyncPort)
        } catch {
            if error.code == .portClosed { return nil }
            throw error
        }
    }

    private func keepLeftover(_ descriptor: Int32, _ peerAddress: SocketAddress?) {
        let kept = leftover.withLock { leftover -> Bool in
            guard !leftover.closed else { return false }
            leftover.descriptor = descriptor
            leftover.peerAddress = peerAddress
            return true
        }
        if !kept { SystemCall.close(descriptor) }
    }

    private func takeLeftover() -> (Int32, SocketAddress?)? {
        leftover.withLock { leftover in
            guard let descriptor = leftover.descriptor else { return nil }
            leftover.descriptor = nil
            return (descriptor, leftover.peerAddress)
        }
    }

    // MARK: The sequence

    /// The accepted connections, as an `AsyncSequence` that ends when the listener is closed.
    ///
    /// Iterating posts one accept per connection asked for. When accepting fails (`EMFILE`,
    /// `ENFILE`, `ENOBUFS`, `ENOMEM`, ...) the iterator logs a warning, waits (10 ms doubling to
    /// 1 s, the server's accept back-off) and tries again instead of ending.
    public var connections: Connections {
        Connections(listener: self)
    }

    /// The accepted connections of a ``TCPListener``. See ``TCPListener/connections``.
    ///
    /// Thread-safety: a value; iterate it from one task at a time (see ``TCPListener``).
    public struct Connections: AsyncSequence, Sendable {
        /// An accepted connection, owned by whoever takes it from the sequence.
        public typealias Element = TCPConnection
        /// `RingPortError` or `CancellationError`.
        public typealias Failure = any Error

        let listener: TCPListener

        /// An iterator that accepts one connection per ``Iterator/next()``.
        public func makeAsyncIterator() -> Iterator {
            Iterator(listener: listener)
        }

        /// The iterator of ``Connections``. Not thread-safe: one task uses it.
        public struct Iterator: AsyncIteratorProtocol {
            let listener: TCPListener

            /// The next connection, or nil once the listener is closed.
            public mutating func next() async throws -> TCPConnection? {
                while true {
                    do {
                        return try await listener.accept()
                    } catch let error as RingPortError {
                        guard error.code == .systemCallFailed, let cause = error.errno else { throw error }
                        guard let (delay, _) = listener.backoff.delay(after: cause) else { continue }
                        listener.asyncPort.logger.warning(
                            "accept on \(listener.localAddress): \(error); retrying in \(delay)")
                        try await Task.sleep(for: delay)
                    }
                }
            }
        }
    }
}
