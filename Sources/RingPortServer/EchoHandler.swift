import RingPort

/// The echo server of the completion-port model: every byte a client sends comes back.
///
/// Run it with ``TCPServer``: `TCPServer(configuration: …, handler: EchoHandler())`. Received
/// bytes are written back as they are; with provided buffers (multishot receive) the buffer
/// itself is sent and released after the send, without a copy.
public struct EchoHandler: ConnectionHandler {
    /// An echo handler.
    public init() {}

    /// Writes `bytes` back (``Connection/write(_:)-(ReceivedBytes)``), in order with what was
    /// received before.
    public func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        connection.write(bytes)
    }
}
