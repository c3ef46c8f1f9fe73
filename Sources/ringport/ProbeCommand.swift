import ArgumentParser
import RingPort

struct ProbeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: """
            Print the io_uring features RingPort uses that this kernel has, the fallbacks for the rest, and the \
            backend --backend auto picks.
            """,
        discussion: """
            Each feature is tried on loopback sockets (127.0.0.1, an ephemeral port) with a small ring of its own. \
            Where io_uring is refused (a seccomp filter, kernel.io_uring_disabled, an old kernel), says why and that \
            the epoll backend serves. Exit status 1 only when neither backend could serve.
            """
    )

    func run() throws {
        let fromEnvironment: CompletionPort.Backend
        do {
            fromEnvironment = try CompletionPort.Backend.fromEnvironment()
        } catch {
            StandardError.write("error: \(error)")
            throw ExitCode.failure
        }
        do {
            print(try IOURingFeatures.probe())
            switch fromEnvironment {
            case .epoll:
                print("backend: auto picks epoll (\(CompletionPort.Backend.environmentVariable)=epoll)")
            default:
                print("backend: auto picks io_uring (the kernel sets it up)")
            }
        } catch  where error.unavailability?.isRefusal == true {
            print("io_uring: unavailable. \(error)")
            if fromEnvironment == .ioURing {
                print(
                    """
                    backend: none: \(CompletionPort.Backend.environmentVariable)=io_uring asks for io_uring \
                    (auto would pick epoll)
                    """)
            } else {
                print(
                    """
                    backend: auto picks epoll (io_uring is refused, see above): the same completion-port semantics \
                    over readiness; no multishot accept or receive, no provided buffers, no zero-copy send
                    """)
            }
        } catch {
            StandardError.write("error: \(error)")
            throw ExitCode.failure
        }
        print(
            """
            CPUs available: \(SystemInfo.availableCPUCount); default workers: \
            \(CompletionPort.Configuration.defaultWorkerCount), default rings: \
            \(CompletionPort.Configuration.defaultRingCount)
            """
        )
    }
}
