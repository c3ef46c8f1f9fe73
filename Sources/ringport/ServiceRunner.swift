import Glibc
import Logging
import ServiceLifecycle
import UnixSignals

/// Runs the tool's servers: a `ServiceGroup` of them, shut down gracefully on the first SIGINT
/// or SIGTERM and cancelled on the second (a `TCPServer` then closes its connections at once).
///
/// The one signal loop of the tool. Main task only: it traps SIGINT and SIGTERM for the process.
struct ServiceRunner {
    private let signals: UnixSignalsSequence

    /// Traps SIGINT and SIGTERM (and ignores SIGPIPE). Create it before printing that the server
    /// listens: whoever reads the banner sees a process that will take its signals, with all
    /// its descriptors open.
    init() async {
        // RingPort sends with MSG_NOSIGNAL; this covers any other write to a closed socket.
        signal(SIGPIPE, SIG_IGN)
        signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
    }

    /// Blocks SIGINT and SIGTERM in the calling thread, and so in every thread it starts later.
    ///
    /// Call it first thing on the main thread, before any other thread exists. The signals then
    /// stay pending for the process until `run` takes them (libdispatch reads them through a
    /// signalfd), instead of landing on whichever thread the kernel picks (a worker that
    /// does not block them would run libdispatch's handler there, and the signal could be lost).
    static func blockShutdownSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Runs `services` until they have all returned; calls `onSignal` with each signal caught and
    /// whether it was the first (graceful) one.
    func run(
        _ services: [any Service], logger: Logger, onSignal: @escaping @Sendable (UnixSignal, _ first: Bool) -> Void
    ) async throws {
        let signals = self.signals
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: logger))
        try await withThrowingTaskGroup(of: Bool.self) { tasks in
            tasks.addTask {
                do {
                    try await group.run()
                } catch is CancellationError {
                    // Forced by the second signal: the services returned once stopped.
                }
                return true
            }
            tasks.addTask {
                var iterator = signals.makeAsyncIterator()
                guard let first = await iterator.next() else { return false }
                onSignal(first, true)
                await group.triggerGracefulShutdown()
                guard let second = await iterator.next() else { return false }
                onSignal(second, false)
                return false
            }
            while let groupEnded = try await tasks.next() {
                // The group ended (stop listening for signals), or a second signal came (cancel
                // the group, then wait for it to end).
                tasks.cancelAll()
                if groupEnded { return }
            }
        }
    }
}

extension UnixSignal {
    /// `SIGINT`, `SIGTERM`, ... as the tool prints them.
    var name: String {
        switch self {
        case .sigint: "SIGINT"
        case .sigterm: "SIGTERM"
        default: "signal \(rawValue)"
        }
    }
}
