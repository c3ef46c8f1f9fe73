import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import Testing

@testable import RingPortAsync

extension AsyncPort.Resumption: CustomTestStringConvertible {
    public var testDescription: String {
        switch self {
        case .portWorkers: "port workers"
        case .globalExecutor: "global executor"
        }
    }
}

/// An async port with one ring (and the default six workers) resuming tasks as asked.
func makeAsyncPort(
    _ resumption: AsyncPort.Resumption = .portWorkers, receiveBufferSize: Int = 16384
) throws -> AsyncPort {
    var configuration = AsyncPort.Configuration()
    configuration.port.ringCount = 1
    configuration.resumption = resumption
    configuration.receiveBufferSize = receiveBufferSize
    return try AsyncPort(configuration: configuration)
}

/// Expects the async port to be idle (no operation in flight, no completion waiting), shuts it
/// down, and expects the process's descriptors to come back to `descriptorsBefore`.
func expectCleanShutdown(
    _ asyncPort: AsyncPort, descriptorsBefore: DescriptorSnapshot, sourceLocation: SourceLocation = #_sourceLocation
) async {
    let idle = await eventuallyAsync {
        let statistics = asyncPort.statistics
        return statistics.operationsInFlight == 0 && statistics.completionsWaiting == 0
    }
    #expect(idle, "still in flight: \(asyncPort.statistics)", sourceLocation: sourceLocation)
    #expect(asyncPort.statistics.staleCompletions == 0, sourceLocation: sourceLocation)
    await asyncPort.shutdown()
    let released = await eventuallyAsync { descriptorsBefore.allClosedAgain }
    #expect(
        released,
        "still open: \(descriptorsBefore.openedSince)",
        sourceLocation: sourceLocation)
}

extension ByteBuffer {
    /// The readable bytes, as an array.
    var bytes: [UInt8] { Array(readableBytesView) }
}

extension Optional<ByteBuffer> {
    /// The readable bytes, or nil for nil.
    var bytes: [UInt8]? { map(\.bytes) }
}

/// Waits (up to 30 s) until a write on `connection` waits for room and `count` has not changed
/// for 300 ms while it did, and returns `count`. A writer that counts each write once it returned
/// has then counted all but the waiting one. Waiting once is not enough: the loopback socket
/// buffers grow for a while (autotuning), which lets the waiting write go on.
func countOnceTheWriterWaits(
    _ connection: TCPConnection, _ count: LockedBox<Int>, sourceLocation: SourceLocation = #_sourceLocation
) async throws -> Int {
    let deadline = ContinuousClock.now + .seconds(30)
    var waitingAt: Int?
    while ContinuousClock.now < deadline {
        // The state first: a writer that resumed, counted and waits again between the two reads
        // would otherwise be counted one short.
        let waiting = connection.streams.hasWaitingWriter
        let now = count.withLock { $0 }
        if waiting && now == waitingAt { return now }
        waitingAt = waiting ? now : nil
        try await Task.sleep(for: .milliseconds(waiting ? 300 : 20))
    }
    Issue.record("no write settled waiting for room", sourceLocation: sourceLocation)
    return count.withLock { $0 }
}

/// A task on `io`'s workers that writes `chunk` to `connection` until a write throws, counting
/// the writes that returned, and the count once one of its writes waits for room
/// (``countOnceTheWriterWaits(_:_:sourceLocation:)``): the peer does not read.
struct WaitingWriter {
    let task: Task<Void, any Error>
    let written: LockedBox<Int>
    /// Writes that had returned when the writer was found waiting.
    let countWhenWaiting: Int

    init(
        writing chunk: ByteBuffer, to connection: TCPConnection, on io: AsyncPort,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let written = LockedBox(0)
        task = Task(executorPreference: io.executor) {
            while true {
                try await connection.write(chunk)
                written.withLock { $0 += 1 }
            }
        }
        self.written = written
        countWhenWaiting = try await countOnceTheWriterWaits(connection, written, sourceLocation: sourceLocation)
    }
}

/// The name of the calling thread.
func currentThreadName() -> String {
    let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? ""
    return name.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// A side of a loopback connection on `io` and a blocking client for the other side.
func connectedPair(on io: AsyncPort) async throws -> (TCPConnection, PeerClient) {
    let listener = try TCPListener.bind(to: loopbackAnyPort(), on: io)
    defer { listener.close() }
    let address = listener.localAddress
    async let client = onThread { try BlockingClient(connectingTo: address) }
    let connection = try #require(try await listener.accept())
    return (connection, PeerClient(try await client, address: address))
}

/// A ``BlockingClient`` and the address of the listener it connected to.
struct PeerClient: Sendable {
    let client: BlockingClient
    let localAddress: SocketAddress

    init(_ client: BlockingClient, address: SocketAddress) {
        self.client = client
        localAddress = address
    }

    func send(_ bytes: [UInt8]) throws { try client.send(bytes) }
    func receive(count: Int) throws -> [UInt8] { try client.receive(count: count) }
    func setResetOnClose() { client.setResetOnClose() }
    func close() { client.close() }
}

/// An actor on a serial executor of its own thread ("test-actor"), to tell from the thread's
/// name whether code runs on the actor.
actor InboundReader {
    private static let thread = ThreadExecutor(name: "test-actor")
    nonisolated var unownedExecutor: UnownedSerialExecutor { Self.thread.asUnownedSerialExecutor() }

    /// Reads `inbound` to its end with `for try await`; returns the bytes and, per element,
    /// the thread the loop's body ran on.
    func read(_ inbound: TCPConnection.Inbound) async throws -> ([UInt8], [String]) {
        var bytes: [UInt8] = []
        var threads: [String] = []
        for try await buffer in inbound {
            threads.append(currentThreadName())
            bytes += buffer.readableBytesView
        }
        return (bytes, threads)
    }
}

/// A serial executor that runs its jobs, in order, on one thread of its own.
final class ThreadExecutor: SerialExecutor, @unchecked Sendable {
    // @unchecked: `jobs` is only touched with `condition` locked.
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []

    /// Starts the thread, which lives as long as the process (the executor is a static's).
    init(name: String) {
        _ = try! PThread(name: name, detached: true) { [unowned self] in
            while true {
                condition.lock()
                while jobs.isEmpty { condition.wait() }
                let batch = jobs
                jobs.removeAll()
                condition.unlock()
                for job in batch { job.runSynchronously(on: asUnownedSerialExecutor()) }
            }
        }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }
}
