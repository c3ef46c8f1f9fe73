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

    func run() async throws {
        try await runServer(options: server, label: "echo", handler: EchoHandler())
    }
}
