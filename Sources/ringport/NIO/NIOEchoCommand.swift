import ArgumentParser
import NIOCore

/// `ringport nio-echo`: an echo pipeline of SwiftNIO handlers, on RingPortNIO or on NIOPosix
/// (the same handler, the same options), to compare the transports.
struct NIOEchoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-echo",
        abstract: "Run an echo server written as a SwiftNIO pipeline, on RingPortNIO or NIOPosix.",
        discussion: """
            Each connection's pipeline is one handler that writes back every buffer it reads, flushes at the end of \
            each read burst and stops reading while the channel is not writable. --transport ringport runs it on \
            the completion port (RingPortEventLoopGroup), --transport posix on SwiftNIO's own event loops. Runs \
            until SIGINT or SIGTERM, then closes every connection.
            """
    )

    @OptionGroup var server: NIOServerOptions

    func run() async throws {
        // Half-closure lets the handler finish echoing after the peer's FIN instead of closing at once.
        try await server.runServer(name: "nio-echo", halfClosure: true) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(EchoPipelineHandler())
            }
        }
    }
}
