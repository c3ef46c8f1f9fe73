import ArgumentParser

@main
struct RingportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringport",
        abstract: "Servers and tools on RingPort, the I/O completion port model on io_uring.",
        subcommands: [EchoCommand.self, HTTPCommand.self, ProbeCommand.self]
    )
}
