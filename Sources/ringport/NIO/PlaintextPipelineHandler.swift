import NIOCore
import NIOHTTP1

/// Answers HTTP/1.1 requests like `ringport http`'s `HTTPPlaintextHandler`, byte for byte:
///
/// - `GET /plaintext` (and `HEAD`, without the body): `200 OK`, body `Hello, World!`;
/// - any other path: `404 Not Found`, body `Not Found`;
/// - other methods on `/plaintext`: `405 Method Not Allowed` with `Allow: GET, HEAD`.
///
/// Every response carries `Server: RingPort`, `Date`, `Content-Type: text/plain` and
/// `Content-Length`, in that order. Connections are kept alive unless the request asks to close
/// (`Connection: close`, or HTTP/1.0 without `Connection: keep-alive`); then the response says
/// `Connection: close` and the connection is closed once it has been sent. Malformed requests
/// are answered by NIO's `HTTPServerProtocolErrorHandler` (a bare `400 Bad Request`, unlike
/// RingPort's, which also carries these headers and a body), and the connection is closed.
///
/// Each request is answered as soon as its end has been read, so responses leave in request
/// order even for pipelined requests, and the responses to everything read in one event loop
/// tick are flushed together (one `writev`) in `channelReadComplete`.
final class PlaintextPipelineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let helloWorld = ByteBuffer(string: "Hello, World!")
    static let notFound = ByteBuffer(string: "Not Found")
    static let methodNotAllowed = ByteBuffer(string: "Method Not Allowed")

    /// This channel's event loop's date cache.
    private let dates: HTTPDateCache
    /// The head of the request being read, answered when its end arrives.
    private var request: HTTPRequestHead?
    /// Set once a `Connection: close` response is on its way: later requests are ignored.
    private var closing = false

    init(dates: HTTPDateCache) {
        self.dates = dates
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break  // request bodies are read and dropped
        case .end:
            guard let head = request, !closing else { return }
            request = nil
            respond(to: head, context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Malformed requests have already been answered with 400 by the pipeline's
        // HTTPServerProtocolErrorHandler; for those and for I/O errors, drop the connection.
        context.close(promise: nil)
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let keepAlive = head.isKeepAlive

        // The benchmark's path: the second's prebuilt headers and the shared body buffer.
        if head.method == .GET && head.uri == "/plaintext" && keepAlive && head.version == .http1_1 {
            let responseHead = HTTPResponseHead(version: .http1_1, status: .ok, headers: dates.plaintextHeaders)
            context.write(wrapOutboundOut(.head(responseHead)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(Self.helloWorld))), promise: nil)
            context.write(wrapOutboundOut(.end(nil)), promise: nil)
            return
        }

        let status: HTTPResponseStatus
        let body: ByteBuffer
        if head.uri != "/plaintext" {
            (status, body) = (.notFound, Self.notFound)
        } else if head.method == .GET || head.method == .HEAD {
            (status, body) = (.ok, Self.helloWorld)
        } else {
            (status, body) = (.methodNotAllowed, Self.methodNotAllowed)
        }

        var headers = dates.headers(contentLength: body.readableBytes)
        if status == .methodNotAllowed {
            headers.add(name: "Allow", value: "GET, HEAD")
        }
        if !keepAlive {
            headers.add(name: "Connection", value: "close")
        } else if head.version.major == 1 && head.version.minor == 0 {
            headers.add(name: "Connection", value: "keep-alive")
        }

        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        if keepAlive {
            context.write(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            closing = true
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }
}
