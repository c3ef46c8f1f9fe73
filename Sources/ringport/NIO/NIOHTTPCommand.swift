import ArgumentParser
import NIOCore
import NIOHTTP1

/// `ringport nio-http`: SwiftNIO's HTTP/1.1 server pipeline answering `GET /plaintext` like
/// `ringport http`, on RingPortNIO or on NIOPosix.
struct NIOHTTPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-http",
        abstract: "Run SwiftNIO's HTTP/1.1 server pipeline (NIOHTTP1) on RingPortNIO or NIOPosix.",
        discussion: """
            GET /plaintext answers Hello, World! with Server, Date, Content-Type and Content-Length headers, \
            keep-alive and pipelining included; other paths answer 404. --transport ringport runs the pipeline on \
            the completion port, --transport posix on SwiftNIO's own event loops. Runs until SIGINT or SIGTERM, \
            then closes every connection.
            """
    )

    @OptionGroup var server: NIOServerOptions

    @Flag(
        help: """
            Add NIO's HTTPServerPipelineHandler, which holds back each pipelined request until the previous \
            response has been written (not needed for correctness: every request is answered in order).
            """)
    var pipeliningAssistance = false

    func run() async throws {
        let pipelining = pipeliningAssistance
        let caches = HTTPDateCaches()
        try await server.runServer(name: "nio-http", prepare: { loop in caches.make(on: loop) }) { channel in
            // Runs on the channel's event loop, where its date cache may be used.
            channel.eventLoop.makeCompletedFuture {
                // HTTPRequestDecoder, HTTPResponseEncoder and HTTPServerProtocolErrorHandler
                // (which answers malformed requests with 400 before the channel closes). The
                // handler sets Content-Length on every response and sends only fixed, valid
                // header names and values, so the outbound header validator and the encoder's
                // framing fix-ups would only check them again.
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                    withPipeliningAssistance: pipelining,
                    withErrorHandling: true,
                    withOutboundHeaderValidation: false,
                    withEncoderConfiguration: NIOHTTPCommand.encoderConfiguration
                )
                try channel.pipeline.syncOperations.addHandler(
                    PlaintextPipelineHandler(dates: caches.cache(of: channel.eventLoop)))
            }
        }
    }

    /// The response encoder leaves the framing headers as the handler sets them.
    private static let encoderConfiguration: HTTPResponseEncoder.Configuration = {
        var configuration = HTTPResponseEncoder.Configuration()
        configuration.automaticallySetFramingHeaders = false
        return configuration
    }()
}
