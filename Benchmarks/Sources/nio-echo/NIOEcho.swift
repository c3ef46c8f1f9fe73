// nio-echo: a TCP echo server on SwiftNIO, the baseline for `ringport echo`.
//
//   nio-echo [--host 127.0.0.1] [--port 8888] [--threads 1]
//
// Runs until SIGINT or SIGTERM, then stops accepting, closes every connection and exits 0.

import ArgumentParser
import BenchmarkSupport
import NIOCore
import NIOPosix

@main
struct NIOEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-echo",
        abstract: "A TCP echo server on SwiftNIO (baseline for `ringport echo`).",
        discussion: "Runs until SIGINT or SIGTERM, then closes every connection and exits."
    )

    @OptionGroup var server: ServerOptions

    func run() throws {
        try server.runServer(name: "nio-echo") { bootstrap, _ in
            bootstrap
                // Lets EchoHandler finish echoing after the peer's FIN instead of closing at once.
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(EchoHandler())
                    }
                }
        }
    }
}
