import ArgumentParser
import Glibc
import Logging
import RingPort
import RingPortAsync
import ServiceLifecycle

/// `ringport async-echo`: the echo server written with RingPortAsync (a task per connection,
/// `read` then `write`), to compare resuming tasks on the port's workers with resuming them on
/// Swift's global executor, and both with the completion-port echo (`ringport echo`).
struct AsyncEchoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "async-echo",
        abstract: "Run the echo server written with async/await (RingPortAsync).",
        discussion: """
            One task per connection writes back every buffer its inbound sequence delivers. --resume workers runs \
            the tasks on the completion port's worker threads (a completion resumes its task on \
            the thread that dequeued it); --resume global runs them on Swift's global executor. \
            Runs until SIGINT or SIGTERM, then closes every connection.
            """
    )

    @OptionGroup var listen: ListenOptions

    @Option(help: "Bytes of each connection's own receive buffer, where it cannot receive into provided buffers.")
    var bufferSize = 16384

    @Option(help: "Where tasks run: workers (the port's worker threads) or global (Swift's global executor).")
    var resume: ResumeOption = .workers

    enum ResumeOption: String, ExpressibleByArgument, CaseIterable {
        case workers, global

        var resumption: AsyncPort.Resumption {
            switch self {
            case .workers: .portWorkers
            case .global: .globalExecutor
            }
        }

        /// For the line that says where the server listens.
        var whereTasksRun: String {
            switch self {
            case .workers: "the port's workers"
            case .global: "the global executor"
            }
        }
    }

    func validate() throws {
        if bufferSize < 1 { throw ValidationError("--buffer-size must be at least 1") }
    }

    func run() async throws {
        bootstrapLogging(level: listen.logLevel)
        var configuration = AsyncPort.Configuration()
        listen.configure(&configuration.port)
        configuration.receiveBufferSize = bufferSize
        configuration.resumption = resume.resumption
        configuration.logger = Logger(label: "ringport.async-echo")

        let runner = await ServiceRunner()
        let service: AsyncEchoService
        do {
            let address = try listen.address()
            let io = try AsyncPort(configuration: configuration)
            service = AsyncEchoService(io: io, listener: try TCPListener.bind(to: address, on: io))
        } catch {
            StandardError.write("error: \(error)")
            throw ExitCode.failure
        }
        let rings = service.io.port.ringCount
        print(
            """
            ringport async-echo listening on \(service.listener.localAddress) (\(service.io.port.backend), \
            \(configuration.port.workerCount) workers, \(rings) \(rings == 1 ? "ring" : "rings"), tasks on \
            \(resume.whereTasksRun))
            """
        )
        fflush(nil)

        try await runner.run([service], logger: configuration.logger) { signal, first in
            if first {
                print("received \(signal.name), shutting down")
                fflush(nil)
            }
        }
        let statistics = service.io.statistics
        print(
            """
            stopped: \(service.io.port.backend) backend, \(statistics.completions) completions, \
            \(statistics.kernelEnters) \(service.io.port.backend == .epoll ? "epoll enters" : "io_uring_enter calls"), \
            \(statistics.leaderTakeovers) leader takeovers, \
            \(statistics.staleCompletions + statistics.droppedCompletions) lost
            """
        )
    }

    /// Accepts until the listener closes; one child task per connection echoes what it reads.
    static func serve(_ listener: TCPListener) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            for try await connection in listener.connections {
                group.addTask {
                    do {
                        // Each received buffer goes back as it is: sent from its own storage.
                        try await connection.executeThenClose { inbound, outbound in
                            for try await buffer in inbound { try await outbound.write(consume buffer) }
                        }
                    } catch {
                        // Reset, or closed by the shutdown: the connection ends.
                    }
                }
            }
        }
    }
}

/// `ringport async-echo` as a service: serves until its group shuts down (gracefully or not),
/// then stops listening and shuts the port down, which closes every connection and ends their
/// tasks.
///
/// Thread-safety: immutable; `run()` is called once, by the service group.
final class AsyncEchoService: Service {
    let io: AsyncPort
    let listener: TCPListener

    init(io: AsyncPort, listener: TCPListener) {
        self.io = io
        self.listener = listener
    }

    func run() async throws {
        let listener = self.listener
        let serving = Task(executorPreference: io.preferredExecutor) {
            try await AsyncEchoCommand.serve(listener)
        }
        // Until the group shuts down; a cancellation (second signal) ends the wait too.
        try? await gracefulShutdown()
        listener.close()
        await io.shutdown()
        if case .failure(let error) = await serving.result {
            StandardError.write("error: \(error)")
        }
    }
}
