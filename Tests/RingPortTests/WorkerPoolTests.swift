import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import Synchronization
import Testing

/// The CPUs this process may run on, read from /proc/self/status ("Cpus_allowed_list: 0-1,4").
func cpusAllowedByProc() throws -> Int {
    let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
    let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") })
    let list = line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)
    return list.split(separator: ",").reduce(0) { total, range in
        let bounds = range.split(separator: "-").compactMap { Int($0) }
        return total + (bounds.count == 2 ? bounds[1] - bounds[0] + 1 : 1)
    }
}

/// Whether the calling thread runs a worker of a pool on `port`.
func callingThreadServes(_ port: CompletionPort) -> Bool {
    CompletionWorker.poolWorkerOfCallingThread?._withUnsafeGuaranteedRef { $0.serves(port) } ?? false
}

/// State a pool's owner keeps for a worker, counting its instances and frees.
final class CountedWorkerState {
    let freed: LockedBox<Int>

    init(made: LockedBox<Int>, freed: LockedBox<Int>) {
        self.freed = freed
        made.withLock { $0 += 1 }
    }

    deinit { freed.withLock { $0 += 1 } }
}

/// Instrumentation for one handle: how many threads are inside its handler right now.
final class HandlerProbe: Sendable {
    let inside = Atomic<Int>(0)
    let bytesReceived = Atomic<Int>(0)
    let writesDone = Atomic<Int>(0)
    /// The byte value every received byte must have.
    let pattern: UInt8

    init(pattern: UInt8) {
        self.pattern = pattern
    }
}

extension RingPortTests {
    @Suite struct WorkerPoolTests {
        @Test func defaultWorkerCountIsCPUCountTimesTwoPlusTwo() throws {
            let cpus = try cpusAllowedByProc()
            #expect(CompletionPort.Configuration.defaultWorkerCount == cpus * 2 + 2)
            #expect(CompletionPort.Configuration().workerCount == cpus * 2 + 2)

            let port = try CompletionPort()
            let pool = WorkerPool(port: port, name: "countedpool") { _ in }
            #expect(pool.threadCount == cpus * 2 + 2)
            // The pool's own threads, by name: others of the process come and go meanwhile.
            try pool.start()
            #expect(eventually { threadCount(named: "countedpool-") == cpus * 2 + 2 })
            pool.shutdown()
            #expect(eventually { threadCount(named: "countedpool-") == 0 })
            port.close()
        }

        @Test func poolHandlesPostedCompletionsAndStops() throws {
            let port = try CompletionPort()
            let seen = LockedBox<Set<UInt64>>([])
            let pool = WorkerPool(port: port, threadCount: 4) { completion in
                _ = seen.withLock { $0.insert(completion.userValue) }
            }
            try pool.start()
            for value in 0..<1000 {
                try port.post(value: UInt64(value))
            }
            #expect(eventually { seen.withLock { $0.count } == 1000 })
            pool.shutdown()
            port.close()
            #expect(seen.withLock { $0 } == Set(0..<1000))
            // A pool starts once.
            #expect(throws: RingPortError.self) { try pool.start() }
        }

        /// A handler that blocks while a completion of its handle arrives: the completion waits
        /// behind it (completions of one handle are never handled concurrently), the stopping
        /// worker leaves it in the port, and `handleRemaining(for:)` hands it to the handler on
        /// the calling thread; then the port is idle and its close drops nothing.
        @Test(arguments: [false, true]) func handleRemainingHandsOverWhatABusyWorkerLeft(batches: Bool) throws {
            let port = try CompletionPort()
            let (descriptor, peer) = try makeSocketPair()
            defer { close(peer) }
            let handle = try port.associate(descriptor: descriptor)
            let started = Atomic<Bool>(false)
            let handled = LockedBox<[(value: UInt64, thread: pthread_t, onWorker: Bool)]>([])
            let handle1: @Sendable (Completion) -> Void = { completion in
                if completion.userValue == 1 {
                    started.store(true, ordering: .releasing)
                    usleep(300_000)
                }
                let onWorker = callingThreadServes(port)
                handled.withLock { $0.append((completion.userValue, pthread_self(), onWorker)) }
            }
            let pool =
                batches
                ? WorkerPool(port: port, threadCount: 2, maximumBatch: 4) { batch in batch.forEach(handle1) }
                : WorkerPool(port: port, threadCount: 2, handler: handle1)
            try pool.start()
            try port.post(handle: handle, value: 1)
            #expect(eventually { started.load(ordering: .acquiring) })
            try port.post(handle: handle, value: 2)
            pool.shutdown()
            #expect(handled.withLock { $0.map(\.value) } == [1])
            // Deferred behind the busy worker, or not even reaped yet: left in the port either way.
            let left = port.statistics
            #expect(left.completionsWaiting + left.operationsInFlight == 1)
            #expect(pool.handleRemaining(for: .seconds(5)))
            let values = handled.withLock { $0.map(\.value) }
            #expect(values == [1, 2])
            #expect(handled.withLock { $0.last.map { pthread_equal($0.thread, pthread_self()) != 0 } } == true)
            // The calling thread handled it, and does not count as a worker (no per-worker state).
            #expect(handled.withLock { $0.map(\.onWorker) } == [true, false])
            #expect(!callingThreadServes(port))
            #expect(port.statistics.completionsWaiting == 0 && port.statistics.operationsInFlight == 0)
            port.close(handle)
            port.close()
        }

        /// What a pool's owner keeps for a worker (the server's write chunks, the async
        /// executor's run list) is made once on the worker's thread, found again by its type
        /// only, and freed when the worker's loop ends; other threads have no pool worker.
        @Test func aWorkerKeepsItsOwnersStateUntilItsLoopEnds() throws {
            let port = try CompletionPort()
            defer { port.close() }
            let made = LockedBox(0)
            let freed = LockedBox(0)
            let seen = LockedBox<[(state: ObjectIdentifier?, otherType: Bool)]>([])
            let pool = WorkerPool(port: port, threadCount: 1) { _ in
                guard let worker = CompletionWorker.poolWorkerOfCallingThread else {
                    return seen.withLock { $0.append((nil, false)) }
                }
                worker._withUnsafeGuaranteedRef { worker in
                    let state = worker.ownerState(CountedWorkerState.self) {
                        CountedWorkerState(made: made, freed: freed)
                    }
                    let otherType = worker.ownerState(HandlerProbe.self) != nil
                    seen.withLock { $0.append((state.map { ObjectIdentifier($0.takeUnretainedValue()) }, otherType)) }
                }
            }
            try pool.start()
            for value in 1...3 { try port.post(value: UInt64(value)) }
            #expect(eventually { seen.withLock { $0.count } == 3 })
            let states = seen.withLock { $0 }
            #expect(states.allSatisfy { $0.state != nil && $0.state == states[0].state && !$0.otherType })
            #expect(made.withLock { $0 } == 1)
            #expect(freed.withLock { $0 } == 0, "kept while the worker runs")
            pool.shutdown()
            #expect(freed.withLock { $0 } == 1, "freed when the worker's loop ended")
            #expect(CompletionWorker.poolWorkerOfCallingThread == nil)
        }

        /// Work handed to a thread of its own (a shutdown) when no thread can be created: on a
        /// plain thread it runs there, before the call returns; from a pool worker it runs off the
        /// pool's workers, since what it is for waits for every worker to stop.
        @Test func workForAThreadOfItsOwnRunsOffThePoolWhenNoThreadCanStart() async throws {
            let inline = LockedBox<(ran: Bool, onWorker: Bool)>((false, false))
            PThread.creationFailureCountdown.store(1, ordering: .relaxed)
            let inlineError = PThread.runDetached(name: "test-no-thread") {
                inline.withLock { $0 = (true, CompletionWorker.poolWorkerOfCallingThread != nil) }
            }
            #expect(inlineError?.code == .systemCallFailed && inlineError?.errno == .resourceTemporarilyUnavailable)
            #expect(inline.withLock { $0.ran && !$0.onWorker }, "ran on the calling thread before returning")

            let port = try CompletionPort()
            defer { port.close() }
            let fromWorker = LockedBox<(error: RingPortError?, ran: Bool, onWorker: Bool)>((nil, false, true))
            let pool = WorkerPool(port: port, threadCount: 1) { _ in
                PThread.creationFailureCountdown.store(1, ordering: .relaxed)
                let error = PThread.runDetached(name: "test-no-thread") {
                    let onWorker = CompletionWorker.poolWorkerOfCallingThread != nil
                    fromWorker.withLock {
                        $0.ran = true; $0.onWorker = onWorker
                    }
                }
                fromWorker.withLock { $0.error = error }
            }
            try pool.start()
            try port.post(value: 1)
            // Polled without blocking a thread: the work runs on Swift's global executor.
            #expect(await eventuallyAsync { fromWorker.withLock { $0.ran && $0.error != nil } })
            #expect(fromWorker.withLock { !$0.onWorker }, "ran on a pool worker")
            pool.shutdown()
            #expect(PThread.creationFailureCountdown.load(ordering: .relaxed) == 0)
        }

        /// A pool with a batch handler: 1,000 posted completions arrive exactly once, in batches
        /// of at least one and at most `maximumBatch`.
        @Test func batchPoolHandsEveryCompletionOnceInBoundedBatches() throws {
            let port = try CompletionPort()
            let seen = LockedBox<[UInt64]>([])
            let batchSizes = LockedBox<[Int]>([])
            let pool = WorkerPool(port: port, threadCount: 3, maximumBatch: 8) { batch in
                let values = batch.map(\.userValue)
                seen.withLock { $0 += values }
                batchSizes.withLock { $0.append(values.count) }
            }
            try pool.start()
            for value in 0..<1000 {
                try port.post(value: UInt64(value))
            }
            #expect(eventually { seen.withLock { $0.count } >= 1000 })
            pool.shutdown()
            port.close()
            #expect(seen.withLock { $0 }.sorted() == (0..<1000).map(UInt64.init))
            #expect(batchSizes.withLock { $0 }.allSatisfy { (1...8).contains($0) })
        }

        /// Pairs of connected sockets, both ends on the port; every handle has a read and a write in
        /// flight at once, and one completion in 40 sleeps past the stall threshold so that standby
        /// workers take rings over. No handle's completions may ever overlap.
        @Test func completionsOfOneHandleNeverOverlap() throws {
            var configuration = CompletionPort.Configuration()
            configuration.ringCount = 2
            configuration.workerCount = 6
            configuration.stallThreshold = .milliseconds(2)
            configuration.logger.logLevel = .warning
            let port = try CompletionPort(configuration: configuration)

            let pairs = 40
            let chunk = 4096
            let writesPerHandle = 64
            let overlaps = Atomic<Int>(0)
            let failures = Atomic<Int>(0)
            let threadsSeen = LockedBox<Set<UInt>>([])
            let finished = Atomic<Int>(0)

            let pool = WorkerPool(port: port) { completion in
                guard let handle = completion.handle, let context = completion.context,
                    let probe = handle.userState as? HandlerProbe
                else { return }
                if probe.inside.wrappingAdd(1, ordering: .acquiringAndReleasing).oldValue != 0 {
                    overlaps.add(1, ordering: .relaxed)
                }
                _ = threadsSeen.withLock { $0.insert(UInt(pthread_self())) }
                if Int.random(in: 0..<40) == 0 { usleep(6_000) }
                switch completion.operation {
                case .read where completion.bytesTransferred > 0:
                    let bytes = context.bytes(in: 0..<completion.bytesTransferred)
                    if bytes.contains(where: { $0 != probe.pattern }) { failures.add(1, ordering: .relaxed) }
                    let total = probe.bytesReceived.add(completion.bytesTransferred, ordering: .relaxed).newValue
                    if total < chunk * writesPerHandle {
                        do { try port.read(handle, into: context) } catch { failures.add(1, ordering: .relaxed) }
                    } else {
                        finished.add(1, ordering: .relaxed)
                    }
                case .write where completion.error == nil:
                    context.offset += completion.bytesTransferred
                    if context.offset == context.count {
                        context.offset = 0
                        if probe.writesDone.add(1, ordering: .relaxed).newValue == writesPerHandle { break }
                    }
                    do { try port.write(handle, from: context, range: context.offset..<context.count) } catch {
                        failures.add(1, ordering: .relaxed)
                    }
                default:
                    failures.add(1, ordering: .relaxed)
                }
                probe.inside.subtract(1, ordering: .acquiringAndReleasing)
            }
            try pool.start()

            var handles: [IOHandle] = []
            for index in 0..<pairs {
                let (left, right) = try makeSocketPair()
                let pattern = UInt8(truncatingIfNeeded: index)
                // Each end writes one byte value; the probe of its peer holds the value that peer expects.
                let leftHandle = try port.associate(descriptor: left, userState: HandlerProbe(pattern: ~pattern))
                let rightHandle = try port.associate(descriptor: right, userState: HandlerProbe(pattern: pattern))
                for (handle, writtenByte) in [(leftHandle, pattern), (rightHandle, ~pattern)] {
                    let reader = IOContext(capacity: chunk)
                    let writer = IOContext(capacity: chunk)
                    writer.copyBytes(from: [UInt8](repeating: writtenByte, count: chunk))
                    writer.count = chunk
                    try port.read(handle, into: reader)
                    try port.write(handle, from: writer, range: 0..<chunk)
                    handles.append(handle)
                }
            }
            #expect(eventually(timeout: .seconds(60)) { finished.load(ordering: .relaxed) == pairs * 2 })
            pool.shutdown()
            for handle in handles { port.close(handle) }
            port.close()

            #expect(overlaps.load(ordering: .relaxed) == 0)
            #expect(failures.load(ordering: .relaxed) == 0)
            #expect(threadsSeen.withLock { $0.count } > 1)
            #expect(port.statistics.leaderTakeovers > 0, "the stalls must have made standbys take rings over")
            #expect(port.statistics.staleCompletions == 0)
        }
    }
}

extension RingPortTests.WorkerPoolTests {
    /// The kernel finishes a request's work on the thread that submitted it. After a standby
    /// took a ring over from a leader stuck in a handler, the old leader parks, but the requests
    /// it submitted (here a multishot accept) must still complete: a connection made afterwards
    /// is accepted.
    @Test func requestsSubmittedByAFormerLeaderStillComplete() throws {
        var configuration = CompletionPort.Configuration()
        configuration.ringCount = 1
        configuration.workerCount = 4
        configuration.stallThreshold = .milliseconds(2)
        configuration.logger.logLevel = .error
        let port = try CompletionPort(configuration: configuration)
        let listenerDescriptor = try TCPSocket.makeListener(address: SocketAddress(host: "127.0.0.1", port: 0))
        let address = try TCPSocket.localAddress(of: listenerDescriptor)
        let listener = try port.associate(descriptor: listenerDescriptor)
        let accepted = LockedBox<[Int32]>([])
        let pool = WorkerPool(port: port) { completion in
            guard let descriptor = completion.acceptedDescriptor else { return }
            let count = accepted.withLock {
                $0.append(descriptor); return $0.count
            }
            // The first accept's handler blocks: a standby takes the ring over meanwhile.
            if count == 1 { usleep(100_000) }
        }
        try pool.start()
        if port.features.multishotAccept {
            try port.acceptMultishot(on: listener, context: IOContext(capacity: 0))
        } else {
            // The epoll backend: one accept per connection, all posted by this thread up front.
            for _ in 1...4 { try port.accept(on: listener, context: IOContext(capacity: 0)) }
        }
        var clients: [Int32] = []
        defer { clients.forEach { close($0) } }
        for round in 1...4 {
            clients.append(try TCPSocket.connect(to: address))
            #expect(
                eventually(timeout: .seconds(5)) { accepted.withLock { $0.count } == round },
                "connection \(round) was accepted")
            // Let the former leader come back from its handler and park.
            usleep(200_000)
        }
        #expect(port.statistics.leaderTakeovers >= 1)
        pool.shutdown()
        accepted.withLock { $0.forEach { close($0) } }
        port.close()
    }
}
