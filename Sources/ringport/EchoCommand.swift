import ArgumentParser
import RingPortServer

struct EchoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echo",
        abstract: "Run the echo server: every byte a client sends comes back.",
        discussion:
            """
            Runs until SIGINT or SIGTERM, then finishes and closes every connection; a second signal closes them \
            at once.
            """
    )

    @OptionGroup var server: ServerOptions

    @Option(
        help: """
            After this many seconds, block the handler (asleep, 20 ms) on --stall-count receives, so that \
            standbys take the ring over: for benchmarks of the server after takeovers.
            """)
    var stallAfter: Double?

    @Option(help: "How many receives --stall-after blocks.")
    var stallCount = 5

    func run() async throws {
        if let stallAfter {
            let handler = StallingEchoHandler(
                count: stallCount, after: .milliseconds(Int64(stallAfter * 1000)), stall: .milliseconds(20))
            try await runServer(options: server, label: "echo", handler: handler)
        } else {
            try await runServer(options: server, label: "echo", handler: EchoHandler())
        }
    }
}
