import ArgumentParser
import RingPort

struct ProbeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Print the io_uring features RingPort uses that this kernel has, and the fallbacks for the rest.",
        discussion:
            "Each feature is tried on loopback sockets (127.0.0.1, an ephemeral port) with a small ring of its own."
    )

    func run() throws {
        do {
            print(try IOURingFeatures.probe())
            print(
                """
                CPUs available: \(SystemInfo.availableCPUCount); default workers: \
                \(CompletionPort.Configuration.defaultWorkerCount), default rings: \
                \(CompletionPort.Configuration.defaultRingCount)
                """
            )
        } catch {
            StandardError.write("error: \(error)")
            throw ExitCode.failure
        }
    }
}
