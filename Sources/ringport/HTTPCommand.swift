import ArgumentParser
import RingPortHTTP
import RingPortServer

struct HTTPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http",
        abstract: "Run the HTTP/1.1 plaintext responder: GET /plaintext answers Hello, World!",
        discussion: """
            Keep-alive and pipelining as in the TechEmpower plaintext test; 404 for other paths, \
            400 for malformed requests, 431 for oversized heads, 413 for oversized bodies, each \
            error closing the connection. Runs until SIGINT or SIGTERM, then answers what it has \
            received and closes every connection; a second signal closes them at once.
            """
    )

    @OptionGroup var server: ServerOptions

    @Option(help: "The largest request head (request line and headers) accepted, in bytes.")
    var maxHeadBytes = 8192

    @Option(help: "The largest request body accepted (and skipped), in bytes.")
    var maxBodyBytes = 1 << 20

    func run() async throws {
        try await runServer(
            options: server, label: "http",
            handler: HTTPPlaintextHandler(maximumHeadBytes: maxHeadBytes, maximumBodyBytes: maxBodyBytes),
            configure: HTTPPlaintextHandler.configure)
    }
}
