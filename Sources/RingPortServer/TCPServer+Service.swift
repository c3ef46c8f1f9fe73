import RingPort
import ServiceLifecycle

/// A ``TCPServer`` runs as a swift-service-lifecycle `Service`, so that a `ServiceGroup` starts
/// it, shuts it down gracefully on SIGTERM (or whatever the group is configured with), and
/// cancels it when another service fails.
///
/// ```swift
/// let server = try TCPServer(configuration: configuration, handler: MyHandler())
/// let group = ServiceGroup(resources: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
/// try await group.run()
/// ```
extension TCPServer: Service {
    /// Runs the server until it has stopped.
    ///
    /// Starts the server unless ``start()`` already did; then waits. When the task's service
    /// group shuts down gracefully, the server shuts down as ``shutdown(gracePeriod:)`` with
    /// ``Configuration/gracefulShutdownPeriod``: it stops accepting, lets every connection answer
    /// what it received and send what is queued, closes the connections still open after the
    /// grace period, and waits for every completion. When the task is cancelled (before or
    /// during that), the shutdown is forced (``forceShutdown()``): connections are closed at
    /// once. Either way `run()` returns once the server has stopped, with no operation left in
    /// flight and the port closed. It also returns when the server was shut down by a direct
    /// call to ``shutdown(gracePeriod:)``.
    ///
    /// Outside a `ServiceGroup` there is no graceful shutdown to wait for: cancel the task, or
    /// call ``shutdown(gracePeriod:)``.
    ///
    /// ## Threads
    /// May be called from any task, once per server. It does not block the calling thread:
    /// the shutdown's waiting happens on a thread of its own while the task is suspended (so
    /// `run()` is safe on Swift's cooperative pool). Do not call it from a
    /// ``ConnectionHandler`` callback.
    ///
    /// - Throws: `RingPortError` when the server cannot start (its port is closed again
    ///   before the error is thrown).
    public func run() async throws {
        do {
            _ = try startIfIdle()
        } catch {
            await shutdownOffThread(gracePeriod: .zero)
            throw error
        }
        let gracePeriod = configuration.gracefulShutdownPeriod
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await stopped.wait()
            } onGracefulShutdown: {
                self.startShutdownThread(gracePeriod: gracePeriod)
            }
        } onCancel: {
            self.forceShutdown()
            self.startShutdownThread(gracePeriod: .zero)
        }
    }

    /// Shuts the server down on a thread of its own and waits, suspended, until it stopped.
    private func shutdownOffThread(gracePeriod: Duration) async {
        startShutdownThread(gracePeriod: gracePeriod)
        await stopped.wait()
    }

    /// Starts ``shutdown(gracePeriod:)`` on a new thread and returns; ``stopped`` is signalled
    /// when it has finished. A second call while one shuts down returns at once (the shutdown
    /// is idempotent), so the graceful path and a cancellation may both call this.
    private func startShutdownThread(gracePeriod: Duration) {
        // Without a thread, the shutdown runs on the calling thread (a task's thread, blocked
        // for the grace period at most).
        if let error = PThread.runDetached(name: "ringport-stop", { [self] in shutdown(gracePeriod: gracePeriod) }) {
            configuration.logger.error("shutdown: \(error); shut down on the calling thread")
        }
    }
}
