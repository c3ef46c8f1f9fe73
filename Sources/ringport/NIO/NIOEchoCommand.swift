import ArgumentParser
import NIOCore
import RingPort

/// `ringport nio-echo`: an echo pipeline of SwiftNIO handlers, on RingPortNIO or on NIOPosix
/// (the same handler, the same options), to compare the transports.
struct NIOEchoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-echo",
        abstract: "Run an echo server written as a SwiftNIO pipeline, on RingPortNIO or NIOPosix.",
        discussion: """
            Each connection's pipeline is one handler that writes back every buffer it reads, flushes at the end of \
            each read burst and stops reading while the channel is not writable. --transport ringport runs it on \
            the completion port (RingPortEventLoopGroup), --transport posix on SwiftNIO's own event loops. With \
            --tls-certificate-chain and --tls-private-key, NIOSSL's server handler comes first in every pipeline: \
            clients speak TLS. Runs until SIGINT or SIGTERM, then closes every connection.
            """
    )

    @OptionGroup var server: NIOServerOptions
    @OptionGroup var tls: EchoTLSOptions

    func run() async throws {
        let serverTLS: EchoServerTLS?
        do {
            serverTLS = try tls.makeServerTLS()
        } catch {
            StandardError.write("error: nio-echo: TLS: \(error)")
            throw ExitCode.failure
        }
        // Half-closure lets the handler finish echoing after the peer's FIN instead of closing at once.
        try await server.runServer(name: "nio-echo", halfClosure: true) { channel in
            channel.eventLoop.makeCompletedFuture {
                try serverTLS?.addHandler(to: channel)
                try channel.pipeline.syncOperations.addHandler(EchoPipelineHandler())
            }
        }
    }
}
