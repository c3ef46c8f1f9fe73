import Glibc
import Logging
import RingPort

/// The engine of `ringport load`: a TCP echo load generator on a ``CompletionPort``.
///
/// ``run(monitor:)`` sets up a port (one ring per worker, one worker by default), connects every
/// connection through the port's connect operation, starts the clock, and drives the load with
/// ``LoadWorker``s until the measured window ends; it returns the ``LoadReport``. ``close()``
/// then closes the connections and the port.
///
/// ## Threads and ownership
/// Used by the main thread only (it is not `Sendable`). The main thread is worker 0: it owns the
/// ``CompletionWorker`` created here, submits the connects and the first operations, and stays
/// alive until ``close()``, so the kernel never cancels what it submitted. Workers 1... run on
/// RingPort's `PThread`s started after the connect phase and joined before ``run(monitor:)`` returns.
/// The port, the ``LoadConnections`` (contexts and per-connection state) and the pattern are
/// owned by the generator and outlive every worker.
package final class EchoLoadGenerator {
    /// Connects kept in flight at once during the connect phase: enough to be quick, few enough
    /// not to overflow the server's listen backlog (which makes the kernel drop SYNs and retry a
    /// second later).
    static let connectWindow = 128

    let plan: LoadPlan
    private let port: CompletionPort
    private let connections: LoadConnections
    private let pattern: EchoPattern
    private var handles: [IOHandle] = []
    private var mainWorker: CompletionWorker?
    private var isClosed = false

    /// Creates the port and the connections' contexts and buffers. Nothing is connected yet.
    ///
    /// - Throws: ``LoadFailure`` when the port cannot be created (io_uring refused, with the
    ///   cause and the fix).
    package init(plan: LoadPlan) throws(LoadFailure) {
        self.plan = plan
        var configuration = CompletionPort.Configuration()
        configuration.backend = plan.backend
        configuration.ringCount = plan.workers
        let perRing = (plan.connections + plan.workers - 1) / plan.workers
        // Room for a whole round of sends and receives per batch, and completions to match.
        configuration.ringEntries = UInt32(min(4096, max(256, Self.powerOfTwo(atLeast: 2 * perRing))))
        configuration.completionQueueEntries = UInt32(min(65536, max(4096, Self.powerOfTwo(atLeast: 4 * perRing))))
        configuration.workerCount = plan.workers
        if plan.receiveMode == .multishot {
            configuration.providedBuffers = plan.providedBuffers
        }
        configuration.logger = Logger(label: "ringport.load") { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .error  // closing the port after a run drops completions by design
            return handler
        }
        do {
            port = try CompletionPort(configuration: configuration)
        } catch {
            throw LoadFailure("\(error)")
        }
        if plan.receiveMode == .multishot && !port.supportsMultishotReceive {
            port.close()
            throw LoadFailure(
                """
                multishot receive is unavailable: the \(port.backend) backend has no provided buffers (use \
                --receive single)
                """
            )
        }
        connections = LoadConnections(
            count: plan.connections, depth: plan.depth, sendBufferSize: plan.bufferSize,
            receiveBufferSize: plan.receiveMode == .multishot ? 0 : plan.bufferSize)
        pattern = EchoPattern(messageSize: plan.messageSize)
    }

    deinit {
        close()
    }

    // MARK: Running

    /// Connects, runs the warm-up and the measured window, and returns the report. Main thread.
    ///
    /// - Throws: ``LoadFailure`` when a connection cannot be established (refused, timed out),
    ///   a worker thread cannot start, or the port fails.
    package func run(monitor: LoadMonitor, progress: [WorkerProgress]) throws(LoadFailure) -> LoadReport {
        let worker = port.makeWorker()
        mainWorker = worker
        try connectAll(using: worker)

        let start = MonotonicInstant.now.nanoseconds
        let measureStart = start + plan.warmup.nanosecondsClamped
        let measureEnd = measureStart + plan.duration.nanosecondsClamped
        monitor.beginRun(at: start, measureStart: measureStart, measureEnd: measureEnd)
        let shared = LoadRunState(openConnections: plan.connections)
        let (port, connections, pattern, plan) = (self.port, self.connections, self.pattern, self.plan)
        // Built on the thread that runs it (a LoadWorker holds raw pointers and is not Sendable).
        @Sendable func makeWorker(_ index: Int) -> LoadWorker {
            LoadWorker(
                port: port, connections: connections, pattern: pattern, shared: shared, progress: progress[index],
                plan: plan, measureStart: measureStart, measureEnd: measureEnd, samplesCPU: index == 0)
        }

        // Worker 0 posts every connection's first receive and send before the other workers
        // start, and stamps the sends, so no echo can be handled before its send time is set.
        var main = makeWorker(0)
        for (index, handle) in handles.enumerated() {
            main.start(connection: index, handle: handle)
        }
        main.stampPending(at: MonotonicInstant.now.nanoseconds)

        final class Outcome: @unchecked Sendable {
            // @unchecked: written by one extra worker thread just before it ends, read by the
            // main thread after joining it (pthread_join orders the two).
            var tally: LoadTally?
            var fault: String?
        }
        var threads: [(PThread, Outcome)] = []
        var startFailure: LoadFailure?
        for index in 1..<max(1, plan.workers) {
            let outcome = Outcome()
            do {
                let thread = try PThread(name: "load-\(index)") {
                    var load = makeWorker(index)
                    let completionWorker = port.makeWorker()
                    load.run(on: completionWorker)
                    completionWorker.detach()
                    outcome.tally = load.tally
                    outcome.fault = load.fault
                }
                threads.append((thread, outcome))
            } catch {
                startFailure = LoadFailure("cannot start worker thread \(index): \(error)")
                shared.openConnections.store(0, ordering: .relaxed)
                break
            }
        }

        main.run(on: worker)
        var tally = main.tally
        var fault = main.fault
        for (thread, outcome) in threads {
            thread.join()
            if let other = outcome.tally { tally.merge(other) }
            fault = fault ?? outcome.fault
        }
        if let startFailure { throw startFailure }
        if let fault { throw LoadFailure(fault) }

        // If every connection failed early, the rates are over the time actually measured.
        let end = min(main.stoppedAt, measureEnd)
        let measured = end > measureStart ? end - measureStart : 0
        var cpu: Double?
        if let from = main.cpuAtMeasureStart, let to = main.cpuAtStop {
            cpu = to - from
        }
        return LoadReport(plan: plan, tally: tally, measuredNanoseconds: measured, clientCPUSeconds: cpu)
    }

    /// Closes every connection and the port. Main thread, after ``run(monitor:progress:)``;
    /// idempotent.
    package func close() {
        guard !isClosed else { return }
        isClosed = true
        mainWorker?.detach()
        mainWorker = nil
        // Cancels what is still in flight, waits for the kernel to let go of the buffers, and
        // closes the sockets.
        port.close()
    }

    // MARK: Connecting

    /// Opens every connection: a socket with `TCP_NODELAY`, associated with the port, connected
    /// with the port's connect operation, ``connectWindow`` at a time. Fails on the first refused
    /// connection, when none completes for the connect timeout, or when the phase exceeds its
    /// limit. Main thread.
    private func connectAll(using worker: CompletionWorker) throws(LoadFailure) {
        let address = plan.address
        let phaseStart = MonotonicInstant.now.nanoseconds
        let phaseEnd = phaseStart + plan.connectPhaseLimit.nanosecondsClamped
        var lastProgress = phaseStart
        var posted = 0
        var connected = 0
        var inFlight = 0
        var batch: [Completion] = []
        batch.reserveCapacity(Self.connectWindow)
        handles.reserveCapacity(plan.connections)

        while connected < plan.connections {
            while inFlight < Self.connectWindow && posted < plan.connections {
                let index = posted
                let handle: IOHandle
                do {
                    let descriptor = try TCPSocket.makeSocket(family: address.protocolFamily)
                    do {
                        try TCPSocket.setNoDelay(descriptor)
                        handle = try port.associate(descriptor: descriptor, peerAddress: address)
                    } catch {
                        SystemCall.close(descriptor)
                        throw error
                    }
                    handles.append(handle)
                    try port.connect(handle, to: address, context: connections.receiveContexts[index])
                } catch {
                    throw LoadFailure("connect \(address) (connection \(index)): \(error)")
                }
                posted += 1
                inFlight += 1
            }
            let now = MonotonicInstant.now.nanoseconds
            let stallEnd = lastProgress + plan.connectTimeout.nanosecondsClamped
            if now >= stallEnd || now >= phaseEnd {
                let seconds = Double(now - (now >= phaseEnd ? phaseStart : lastProgress)) / 1e9
                throw LoadFailure(
                    """
                    connect \(address): timed out (no connection established for \
                    \(LoadReport.fixed(seconds, decimals: 1)) s;
                    """
                        + " \(connected) of \(plan.connections) connected)")
            }
            do {
                _ = try worker.dequeue(
                    into: &batch, maximumCount: Self.connectWindow,
                    timeout: .nanoseconds(Int64(min(stallEnd, phaseEnd) - now)))
            } catch {
                throw LoadFailure("waiting for connects: \(error)")
            }
            for completion in batch where completion.operation == .connect {
                inFlight -= 1
                guard let context = completion.context else { continue }
                let index = Int(context.userValue)
                if completion.result < 0 {
                    throw LoadFailure(
                        "connect \(address) (connection \(index)): \(String(cString: strerror(-completion.result)))")
                }
                connections.states[index].isOpen = true
                connected += 1
                lastProgress = MonotonicInstant.now.nanoseconds
            }
            batch.removeAll(keepingCapacity: true)
        }
    }

    private static func powerOfTwo(atLeast value: Int) -> Int {
        var result = 1
        while result < value { result <<= 1 }
        return result
    }
}
