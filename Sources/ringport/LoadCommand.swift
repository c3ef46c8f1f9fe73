import ArgumentParser
import Glibc
import RingPort
import RingPortLoad

/// `ringport load`: a TCP echo load generator on the completion port, the Swift counterpart of
/// `Benchmarks/c/echo_load.c` with the same options, checks, JSON keys and exit statuses.
///
/// Runs on the main thread: it validates the options, raises the descriptor limit, prints the
/// target, runs an ``EchoLoadGenerator`` with a ``LoadMonitor`` beside it, prints the
/// ``LoadReport`` and exits 0 (no error), 2 (errors counted) or 1 (usage or set-up error;
/// ``RingportCommand/main()`` maps argument-parsing errors of this command to 1 as well).
struct LoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Generate TCP echo load on the completion port and verify every echoed byte.",
        discussion: """
            Opens the connections (TCP_NODELAY) before the clock starts, keeps --depth messages \
            of --size bytes in flight on each, and checks every echoed byte against a pattern \
            that depends on the connection, the message and the position. Messages completing \
            during the warm-up are not counted. Latency is from the message's first byte handed \
            to the kernel to its last echoed byte arriving. MB/s is the payload in one direction \
            (10^6 bytes). Errors are corrupted messages, connections the server closed or reset, \
            and data nobody sent. The run always ends by itself: at the end of the measured \
            window, or at the latest 5 s later (a watchdog). Exit status: 0 = no error, 2 = \
            errors were counted, 1 = usage or set-up error (e.g. the server refused a connection). \
            The same tool as Benchmarks/c/echo_load, with the same JSON keys.
            """
    )

    @Option(help: "The echo server's address (numeric IPv4 or IPv6, or localhost).")
    var host = "127.0.0.1"

    @Option(help: "The echo server's TCP port (required).")
    var port: UInt16

    @Option(help: "Connections, 1...\(LoadPlan.maximumConnections).")
    var connections = 64

    @Option(help: "Bytes per message, 1...\(LoadPlan.maximumMessageSize).")
    var size = 128

    @Option(help: "Messages in flight per connection, 1...\(LoadPlan.maximumDepth) (1: ping-pong).")
    var depth = 1

    @Option(help: "Seconds measured, 0.001...86400.")
    var duration: Double = 10

    @Option(help: "Seconds of warm-up before measuring, 0...86400.")
    var warmup: Double = 1

    @Option(help: "Worker threads, each dequeuing from a ring of its own, 1...\(LoadPlan.maximumWorkers).")
    var workers = 1

    @Option(help: "Seconds connecting may go without establishing a connection before the run fails.")
    var connectTimeout: Double = 5

    @Option(
        help:
            """
            How echoes are received: auto (multishot where the kernel has it), multishot (one multishot receive \
            per connection into provided buffers, Linux 6.0+), or single (one receive per completion).
            """
    )
    var receive: ReceiveOption = .auto

    @Option(help: "What performs the I/O: auto (io_uring, or epoll where io_uring is refused), io_uring, or epoll.")
    var backend: CompletionPort.Backend = .automatic

    enum ReceiveOption: String, ExpressibleByArgument, CaseIterable {
        case auto, multishot, single
    }

    @Flag(help: "Print the result as one JSON line on standard output (echo_load's keys).")
    var json = false

    @Flag(help: "Print a progress line every second on standard error even when it is not a terminal.")
    var progress = false

    @Flag(help: "Print neither the target line nor progress lines (errors are still printed).")
    var quiet = false

    func validate() throws {
        if connections > LoadPlan.maximumConnections {
            throw ValidationError("refusing \(connections) connections (maximum \(LoadPlan.maximumConnections))")
        }
        if connections < 1 { throw ValidationError("--connections must be at least 1") }
        if size < 1 || size > LoadPlan.maximumMessageSize {
            throw ValidationError("--size must be in 1...\(LoadPlan.maximumMessageSize)")
        }
        if depth < 1 || depth > LoadPlan.maximumDepth {
            throw ValidationError("--depth must be in 1...\(LoadPlan.maximumDepth)")
        }
        if !(duration >= 0.001 && duration <= 86400) {
            throw ValidationError("--duration must be in 0.001...86400 seconds")
        }
        if !(warmup >= 0 && warmup <= 86400) { throw ValidationError("--warmup must be in 0...86400 seconds") }
        if !(connectTimeout > 0 && connectTimeout <= 3600) {
            throw ValidationError("--connect-timeout must be in (0, 3600] seconds")
        }
        if workers < 1 || workers > LoadPlan.maximumWorkers {
            throw ValidationError("--workers must be in 1...\(LoadPlan.maximumWorkers)")
        }
        if workers > connections { throw ValidationError("--workers must not exceed --connections") }
        if port == 0 { throw ValidationError("--port must be in 1...65535") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let address: SocketAddress
        do {
            address = try SocketAddress(host: host, port: port)
        } catch {
            throw ValidationError("--host: \(error)")
        }
        let receiveMode: LoadPlan.ReceiveMode
        switch receive {
        case .multishot: receiveMode = .multishot
        case .single: receiveMode = .single
        case .auto:
            // Multishot receive needs io_uring (6.0+): not on the epoll backend, chosen or fallen back to.
            let chosen = backend == .automatic ? (try? CompletionPort.Backend.fromEnvironment()) ?? .automatic : backend
            let multishot = chosen != .epoll && ((try? IOURingFeatures.probe())?.multishotReceive ?? false)
            receiveMode = multishot ? .multishot : .single
        }
        let plan = LoadPlan(
            address: address, connections: connections, messageSize: size, depth: depth,
            warmup: .seconds(warmup), duration: .seconds(duration), workers: workers,
            connectTimeout: .seconds(connectTimeout), receiveMode: receiveMode, backend: backend)

        do {
            try DescriptorLimit.raise(toFit: connections + 16 + 2 * workers)  // a ring and an eventfd per worker
        } catch {
            StandardError.write("ringport load: \(error)")
            throw ExitCode.failure
        }
        if !quiet {
            let loopback = plan.targetIsLoopback ? "" : " (not a loopback address)"
            StandardError.write(
                """
                ringport load: \(connections) connections to \(address)\(loopback), \(size)-byte messages, \
                \(depth) in flight per connection, \(LoadReport.fixed(warmup, decimals: 3)) s warm-up \
                + \(LoadReport.fixed(duration, decimals: 3)) s, \(workers) \(workers == 1 ? "worker" : "workers"), \
                \(receiveMode.rawValue) receive
                """)
        }

        let progress = (0..<workers).map { _ in WorkerProgress() }
        let showsProgress = !quiet && (self.progress || isatty(STDERR_FILENO) == 1)
        let monitor = LoadMonitor(
            workers: progress, showsProgress: showsProgress,
            hardDeadline: MonotonicInstant.now.advanced(by: plan.connectPhaseLimit + LoadPlan.teardownAllowance)
                .nanoseconds)
        let report: LoadReport
        do {
            try monitor.start()
            let generator = try EchoLoadGenerator(plan: plan)
            defer { generator.close() }
            report = try generator.run(monitor: monitor, progress: progress)
            print(json ? report.json : report.text)
            fflush(nil)
            if report.tally.mismatchedBytes > 0 {
                StandardError.write("ringport load: \(report.tally.mismatchedBytes) corrupted bytes received")
            }
            // From here the watchdog, if closing hangs, exits with the report's status.
            monitor.finish(exitStatus: report.exitStatus)
        } catch {
            StandardError.write("ringport load: \(error)")
            monitor.finish(exitStatus: ExitCode.failure.rawValue)
            throw ExitCode.failure
        }
        if report.exitStatus != 0 {
            throw ExitCode(report.exitStatus)
        }
    }
}
