import ArgumentParser
import RingPort

@main
struct RingportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringport",
        abstract: "Servers and tools on RingPort, the I/O completion port model on io_uring.",
        subcommands: [
            EchoCommand.self, AsyncEchoCommand.self, HTTPCommand.self, NIOEchoCommand.self, NIOHTTPCommand.self,
            LoadCommand.self, ProbeCommand.self,
        ]
    )

    /// Parses and runs the command like ArgumentParser's own `main()`, except that a usage
    /// error of `ringport load` exits 1 instead of 64: the status `Benchmarks/c/echo_load.c`
    /// uses, which scripts that run either tool rely on.
    static func main() async {
        // Before any other thread starts (see ServiceRunner).
        ServiceRunner.blockShutdownSignals()
        let arguments = Array(CommandLine.arguments.dropFirst())
        do {
            var command = try parseAsRoot(arguments)
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch {
            if arguments.first == LoadCommand.configuration.commandName && exitCode(for: error) == .validationFailure {
                StandardError.write(fullMessage(for: error))
                exit(withError: ExitCode.failure)
            }
            exit(withError: error)
        }
    }
}
