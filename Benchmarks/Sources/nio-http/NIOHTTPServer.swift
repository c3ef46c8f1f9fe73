// nio-http: an HTTP/1.1 plaintext server on SwiftNIO, the baseline for `ringport http`.
//
//   nio-http [--host 127.0.0.1] [--port 8888] [--threads 1] [--pipelining-assistance]
//
// GET /plaintext answers `Hello, World!` with the same status line, headers (Server, Date,
// Content-Type, Content-Length, in that order) and body as RingPort's responder; see
// PlaintextHandler. Runs until SIGINT or SIGTERM, then stops accepting, closes every connection
// and exits 0.

import ArgumentParser
import BenchmarkSupport
import NIOCore
import NIOHTTP1
import NIOPosix

@main
struct NIOHTTPServer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-http",
        abstract: "An HTTP/1.1 plaintext server on SwiftNIO (baseline for `ringport http`).",
        discussion: """
            GET /plaintext answers Hello, World! with Server, Date, Content-Type and \
            Content-Length headers, keep-alive and pipelining included; other paths answer 404. \
            Runs until SIGINT or SIGTERM, then closes every connection and exits.
            """
    )

    @OptionGroup var server: ServerOptions

    @Flag(
        help: """
            Add NIO's HTTPServerPipelineHandler, which holds back each pipelined request until the \
            previous response has been written. Not needed for correctness here: every request is \
            answered, in order, as soon as it has been read.
            """)
    var pipeliningAssistance = false

    func run() throws {
        let pipelining = pipeliningAssistance
        try server.runServer(name: "nio-http") { bootstrap, group in
            let dateCaches = try Self.makeDateCaches(for: group)
            return bootstrap.childChannelInitializer { channel in
                // Runs on the channel's event loop, where its date cache may be used.
                channel.eventLoop.makeCompletedFuture {
                    let dates = dateCaches[ObjectIdentifier(channel.eventLoop)]!.value
                    // HTTPRequestDecoder, HTTPResponseEncoder, and HTTPServerProtocolErrorHandler
                    // (which answers malformed requests with 400 before the channel closes).
                    // PlaintextHandler sets Content-Length on every response and sends only
                    // fixed, valid header names and values, so the outbound header validator
                    // and the encoder's framing fix-ups would only re-check them (together
                    // about 10% of the server's CPU per request).
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withPipeliningAssistance: pipelining,
                        withErrorHandling: true,
                        withOutboundHeaderValidation: false,
                        withEncoderConfiguration: Self.encoderConfiguration
                    )
                    try channel.pipeline.syncOperations.addHandler(PlaintextHandler(dates: dates))
                }
            }
        }
    }

    /// The response encoder leaves the framing headers as PlaintextHandler sets them.
    private static let encoderConfiguration: HTTPResponseEncoder.Configuration = {
        var configuration = HTTPResponseEncoder.Configuration()
        configuration.automaticallySetFramingHeaders = false
        return configuration
    }()

    /// One ``HTTPDateCache`` per event loop, each created on (and bound to) its own loop, keyed by
    /// the loop's identity. The dictionary never changes afterwards, so every channel initializer
    /// may read it; each cache's contents are only ever touched on its loop.
    private static func makeDateCaches(
        for group: MultiThreadedEventLoopGroup
    ) throws -> [ObjectIdentifier: NIOLoopBound<HTTPDateCache>] {
        var caches: [ObjectIdentifier: NIOLoopBound<HTTPDateCache>] = [:]
        for eventLoop in group.makeIterator() {
            caches[ObjectIdentifier(eventLoop)] = try eventLoop.submit {
                NIOLoopBound(HTTPDateCache(eventLoop: eventLoop), eventLoop: eventLoop)
            }.wait()
        }
        return caches
    }
}
