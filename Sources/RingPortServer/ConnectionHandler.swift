import RingPort
import SystemPackage

/// What a ``TCPServer`` does with its connections: the application's side of the server.
///
/// ## Threads
/// Every callback runs on one of the completion port's worker threads — except, at the end of
/// a shutdown, the last ones of a connection whose callback kept its worker busy past the
/// shutdown's timeout: those run on the thread that called
/// ``TCPServer/shutdown(gracePeriod:)``, after the workers stopped. The callbacks of one
/// connection never run at the same time, and run in order (opened, then received as bytes
/// arrive, then closed); callbacks of different connections run concurrently on different
/// rings. A callback should return quickly: while it runs, the other connections of its ring
/// wait (up to the port's stall threshold, after which another worker takes the ring over).
///
/// ## What a callback may do
/// Call the connection's methods (``Connection/write(_:)-(UnsafeRawBufferPointer)``,
/// ``Connection/close()``, ...), read and write ``Connection/userState``, and post operations
/// on the connection's port. Do not block for long and do not call
/// ``TCPServer/shutdown(gracePeriod:)`` from a callback (nor hold, while calling it, a lock
/// that a callback takes).
public protocol ConnectionHandler: Sendable {
    /// A connection was accepted. The first bytes follow in ``connection(_:received:)``.
    func connectionOpened(_ connection: Connection)

    /// Bytes arrived. `bytes` is valid during the call only: copy what you keep, or pass it to
    /// ``Connection/write(_:)-(ReceivedBytes)`` to send it back without a copy.
    func connection(_ connection: Connection, received bytes: ReceivedBytes)

    /// The bytes of a context given to ``Connection/write(_:range:)`` were sent (or the
    /// connection failed first): the context belongs to the application again.
    func connection(_ connection: Connection, finishedWriting context: IOContext)

    /// The connection is closed and its descriptor released; no callback for it follows.
    func connectionClosed(_ connection: Connection, reason: Connection.CloseReason)
}

extension ConnectionHandler {
    /// Does nothing: a handler that keeps no per-connection state need not implement it.
    public func connectionOpened(_ connection: Connection) {}
    /// Does nothing: a handler that never writes its own contexts need not implement it.
    public func connection(_ connection: Connection, finishedWriting context: IOContext) {}
    /// Does nothing. The connection's ``Connection/userState`` is dropped with the connection.
    public func connectionClosed(_ connection: Connection, reason: Connection.CloseReason) {}
}

/// The bytes of one receive, lent to ``ConnectionHandler/connection(_:received:)``.
///
/// Valid during that call only: do not keep it. Either a provided buffer of the ring (multishot
/// receive) or the connection's own receive buffer (plain receive); which one does not matter to
/// the handler.
public struct ReceivedBytes {
    let storage: UnsafeRawBufferPointer
    let providedBuffer: ReceivedBuffer?

    init(storage: UnsafeRawBufferPointer, providedBuffer: ReceivedBuffer?) {
        self.storage = storage
        self.providedBuffer = providedBuffer
    }

    /// The number of bytes.
    public var count: Int { storage.count }

    /// Calls `body` with the bytes; the pointer is valid during the call only.
    public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(storage)
    }

    /// The bytes, copied into an array.
    public var bytes: [UInt8] { Array(storage) }
}
