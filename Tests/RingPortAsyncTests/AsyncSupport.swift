import Foundation
import Glibc
import RingPort
import RingPortAsync
import RingPortTestSupport
import Testing

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

/// Waits until `count` stops changing for 300 ms (up to 30 s) and returns it: a writer that
/// writes as long as it can has settled once the loopback socket buffers stop growing.
func settledCount(_ count: LockedBox<Int>) async throws -> Int {
    var last = -1
    for _ in 0..<100 {
        let now = count.withLock { $0 }
        if now == last { return now }
        last = now
        try await Task.sleep(for: .milliseconds(300))
    }
    return last
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
