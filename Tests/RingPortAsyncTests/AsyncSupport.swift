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
