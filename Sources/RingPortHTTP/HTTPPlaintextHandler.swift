import RingPort
import RingPortServer

/// An HTTP/1.1 responder for the TechEmpower "plaintext" test: `GET /plaintext` answers
/// `Hello, World!` with `Server` and `Date` headers, keep-alive and pipelining included.
///
/// Other paths answer 404, other methods on `/plaintext` 405. A malformed request answers 400, a
/// head over the limit 431, a body over the limit 413, `Transfer-Encoding` 501; each of those
/// closes the connection after the answer. Responses to pipelined requests go out in one write.
///
/// Run it with `TCPServer` and `TCPServer.Configuration.idleTimeoutCountsReceivedBytes` set to
/// false (``configure(_:)`` does it): only complete requests count as progress, so a client that
/// trickles a request byte by byte is closed at the idle timeout.
public struct HTTPPlaintextHandler: ConnectionHandler {
    /// The largest request head accepted (431 beyond).
    public let maximumHeadBytes: Int
    /// The largest request body accepted and skipped (413 beyond).
    public let maximumBodyBytes: Int

    /// A responder with the given request limits.
    public init(maximumHeadBytes: Int = 8192, maximumBodyBytes: Int = 1 << 20) {
        self.maximumHeadBytes = maximumHeadBytes
        self.maximumBodyBytes = maximumBodyBytes
    }

    /// Sets what this handler needs of a server configuration.
    public static func configure(_ configuration: inout TCPServer.Configuration) {
        configuration.idleTimeoutCountsReceivedBytes = false
    }

    /// Gives the connection its parser and date cache (its `Connection.userState`).
    public func connectionOpened(_ connection: Connection) {
        connection.userState = HTTPConnectionState(
            parser: HTTPRequestParser(maximumHeadBytes: maximumHeadBytes, maximumBodyBytes: maximumBodyBytes))
    }

    /// Parses the requests `bytes` completes and answers them in one write; closes the
    /// connection after answering a request that does not keep it alive, or an invalid one.
    public func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        // After the last response (one that closes, or an error's), nothing more is answered:
        // the connection still delivers what arrived while it closes.
        guard let state = connection.userState as? HTTPConnectionState, !state.answeredLast else { return }
        state.date.refresh()
        var closeAfterResponses = false
        let error = bytes.withUnsafeBytes { received in
            state.parser.parse(received) { head in
                guard !closeAfterResponses else { return }
                state.appendResponse(to: head)
                connection.markProgress()
                if !head.keepAlive { closeAfterResponses = true }
            }
        }
        if let error, !closeAfterResponses {
            connection.reportProtocolError()
            state.appendError(error)
            closeAfterResponses = true
        }
        state.flushOutput { connection.write($0) }
        if closeAfterResponses {
            state.answeredLast = true
            connection.close()
        }
    }
}

/// Per-connection state of ``HTTPPlaintextHandler``, confined to the connection's callbacks.
final class HTTPConnectionState: @unchecked Sendable {
    // @unchecked: used only from the callbacks of one connection, which the port serialises.
    var parser: HTTPRequestParser
    var date = HTTPDate()
    /// Responses built during one receive, written together.
    var output: [UInt8] = []
    /// The response that closes the connection went out (to a request that does not keep it
    /// alive, or for an invalid one): later requests are not answered (RFC 9112, 9.6).
    var answeredLast = false

    /// The output buffer's storage kept between receives. A burst of pipelined requests (a
    /// 16 KiB receive of short requests asks for some 80 KiB of responses) grows it past this;
    /// it is then freed, not kept for the connection's life.
    static let keptOutputCapacity = 16384

    init(parser: HTTPRequestParser) {
        self.parser = parser
        output.reserveCapacity(4096)
    }

    /// Hands the responses built (if any) to `write`, then empties the buffer.
    func flushOutput(to write: (UnsafeRawBufferPointer) -> Void) {
        guard !output.isEmpty else { return }
        output.withUnsafeBytes { write($0) }
        if output.capacity > Self.keptOutputCapacity {
            output = []
        } else {
            output.removeAll(keepingCapacity: true)
        }
    }

    private static let body = Array("Hello, World!".utf8)
    /// The common response (GET, HTTP/1.1, keep-alive) around the date, prebuilt.
    private static let okPrefix = Array("HTTP/1.1 200 OK\r\nServer: RingPort\r\nDate: ".utf8)
    private static let okSuffix = Array("\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!".utf8)

    func appendResponse(to head: HTTPRequestHead) {
        let isHead = head.method == "HEAD"
        guard head.target == "/plaintext" else {
            appendStatus("404 Not Found", body: "Not Found", bodyOmitted: isHead, head: head)
            return
        }
        if head.method == "GET" && head.keepAlive && head.minorVersion == 1 {
            output += Self.okPrefix
            output += date.bytes
            output += Self.okSuffix
            return
        }
        guard head.method == "GET" || isHead else {
            appendStatus(
                "405 Method Not Allowed", body: "Method Not Allowed", bodyOmitted: false, head: head,
                extra: "Allow: GET, HEAD\r\n")
            return
        }
        appendHeaders("200 OK", contentLength: Self.body.count, head: head)
        if !isHead { output += Self.body }
    }

    func appendError(_ error: HTTPParseError) {
        let text: String
        switch error {
        case .badRequest: text = "400 Bad Request"
        case .headersTooLarge: text = "431 Request Header Fields Too Large"
        case .bodyTooLarge: text = "413 Content Too Large"
        case .transferEncodingNotImplemented: text = "501 Not Implemented"
        }
        let body = String(text.drop { $0 != " " }.dropFirst())
        appendHeaders(text, contentLength: body.utf8.count, head: nil)
        output += Array(body.utf8)
    }

    private func appendStatus(
        _ status: String, body: String, bodyOmitted: Bool, head: HTTPRequestHead, extra: String = ""
    ) {
        appendHeaders(status, contentLength: body.utf8.count, head: head, extra: extra)
        if !bodyOmitted { output += Array(body.utf8) }
    }

    /// The status line and headers. `head` nil means an error response that closes the connection.
    private func appendHeaders(_ status: String, contentLength: Int, head: HTTPRequestHead?, extra: String = "") {
        output += Array("HTTP/1.1 \(status)\r\nServer: RingPort\r\nDate: ".utf8)
        output += date.bytes
        output += Array("\r\nContent-Type: text/plain\r\nContent-Length: \(contentLength)\r\n".utf8)
        output += Array(extra.utf8)
        if let head {
            if !head.keepAlive {
                output += Array("Connection: close\r\n".utf8)
            } else if head.minorVersion == 0 {
                output += Array("Connection: keep-alive\r\n".utf8)
            }
        } else {
            output += Array("Connection: close\r\n".utf8)
        }
        output += Array("\r\n".utf8)
    }
}
