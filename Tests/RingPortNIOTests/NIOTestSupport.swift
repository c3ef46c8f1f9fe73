import Glibc
import NIOCore
import RingPort
import RingPortNIO
import RingPortTestSupport
import Synchronization
import Testing

/// Echoes every buffer back.
final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

/// Collects what a channel receives and the events it sees, for assertions from the test.
final class RecordingHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    let received = LockedBox<[UInt8]>([])
    let events = LockedBox<[String]>([])
    let errors = LockedBox<[any Error]>([])

    private func record(_ event: String) {
        events.withLock { $0.append(event) }
    }

    func channelRegistered(context: ChannelHandlerContext) { record("registered") }
    func channelActive(context: ChannelHandlerContext) { record("active") }
    func channelInactive(context: ChannelHandlerContext) { record("inactive") }
    func channelUnregistered(context: ChannelHandlerContext) { record("unregistered") }
    func channelReadComplete(context: ChannelHandlerContext) { record("readComplete") }
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        record(context.channel.isWritable ? "writable" : "notWritable")
    }
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent { record("\(event)") }
        context.fireUserInboundEventTriggered(event)
    }
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        record("error")
        errors.withLock { $0.append(error) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        precondition(context.eventLoop.inEventLoop)
        let buffer = unwrapInboundIn(data)
        record("read")
        received.withLock { $0 += buffer.readableBytesView }
    }
}

/// A group with the test's backend (RINGPORT_BACKEND) and one ring.
func makeGroup() throws -> RingPortEventLoopGroup {
    var configuration = RingPortEventLoopGroup.Configuration()
    configuration.port.ringCount = 1
    configuration.port.workerCount = 3
    return try RingPortEventLoopGroup(configuration: configuration)
}

/// A listening echo server on loopback; returns its channel and port.
func startEchoServer(on group: RingPortEventLoopGroup) throws -> (Channel, Int) {
    let server = try RingPortServerBootstrap(group: group)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoHandler()) }
        }
        .bind(host: "127.0.0.1", port: 0)
        .wait()
    return (server, server.localAddress!.port!)
}

/// Lets reads through until `holdAfter` bytes arrived, then holds `read()` back until
/// ``release()`` (once): a handler applying backpressure.
final class ReadGate: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = Never

    let received = LockedBox<[UInt8]>([])
    private let holdAfter: Int
    private let holding = LockedBox(false)
    private var heldRead = false
    private var releasedOnce = false
    private var channel: Channel?

    init(holdAfter: Int) {
        self.holdAfter = holdAfter
    }

    var isHolding: Bool { holding.withLock { $0 } }

    func handlerAdded(context: ChannelHandlerContext) { channel = context.channel }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        let count = received.withLock { bytes in
            bytes += buffer.readableBytesView
            return bytes.count
        }
        if count >= holdAfter && !releasedOnce { holding.withLock { $0 = true } }
    }

    func read(context: ChannelHandlerContext) {
        if isHolding {
            heldRead = true
        } else {
            context.read()
        }
    }

    /// Lets reads through again (from any thread).
    func release() {
        guard let channel else { return }
        channel.eventLoop.execute { [self] in
            holding.withLock { $0 = false }
            releasedOnce = true
            if heldRead {
                heldRead = false
                channel.read()
            }
        }
    }
}

/// A thread of its own (for a blocking peer).
final class PeerThread: @unchecked Sendable {
    private var thread = pthread_t()

    init(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        pthread_create(
            &thread, nil,
            { argument in
                let body = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue().body
                body()
                return nil
            }, box)
    }

    func join() { pthread_join(thread, nil) }

    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
}

/// Connects `count` clients with `connect` (each given the handler recording what it receives),
/// has each write `messagesEach` random messages of 1 to 40,000 bytes, expects each to get
/// exactly its own bytes back, and closes them.
func expectEchoedByteExact(
    clients count: Int, messagesEach: Int, seed: UInt64,
    connect: (RecordingHandler) throws -> Channel,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    var generator = SeededGenerator(state: seed)
    var clients: [(Channel, RecordingHandler, [UInt8])] = []
    for _ in 0..<count {
        let recorder = RecordingHandler()
        let client = try connect(recorder)
        var sent: [UInt8] = []
        for _ in 0..<messagesEach {
            let message = generator.bytesArray(count: Int.random(in: 1...40_000, using: &generator))
            sent += message
            client.writeAndFlush(ByteBuffer(bytes: message), promise: nil)
        }
        clients.append((client, recorder, sent))
    }
    for (_, recorder, sent) in clients {
        #expect(eventually { recorder.received.withLock { $0.count } >= sent.count }, sourceLocation: sourceLocation)
        #expect(recorder.received.withLock { $0 } == sent, sourceLocation: sourceLocation)
    }
    for (client, _, _) in clients { try client.close().wait() }
}

/// Runs `body` with a new group (``makeGroup()``), shuts the group down, and expects no
/// operation left in flight and every descriptor opened meanwhile closed again.
func withGroupLeavingNoDescriptors(
    sourceLocation: SourceLocation = #_sourceLocation, _ body: (RingPortEventLoopGroup) throws -> Void
) throws {
    let descriptorsBefore = DescriptorSnapshot()
    let group = try makeGroup()
    do {
        try body(group)
    } catch {
        try? group.syncShutdownGracefully()
        throw error
    }
    try group.syncShutdownGracefully()
    #expect(group.port.statistics.operationsInFlight == 0, sourceLocation: sourceLocation)
    #expect(
        eventually { descriptorsBefore.allClosedAgain }, "still open: \(descriptorsBefore.openedSince)",
        sourceLocation: sourceLocation)
}

/// A server whose accepted channel gets a ``RecordingHandler``, and a blocking client connected
/// to it: what most channel tests start from.
/// Used by the test's own thread only.
final class RecordingServer {
    let recorder = RecordingHandler()
    /// The accepted channel, once the server accepted the client.
    let accepted = LockedBox<Channel?>(nil)
    let client: BlockingClient
    let server: Channel
    private var clientClosed = false

    init(
        group: RingPortEventLoopGroup, configure: (RingPortServerBootstrap) -> RingPortServerBootstrap
    ) throws {
        let recorder = recorder
        let accepted = accepted
        server = try configure(RingPortServerBootstrap(group: group))
            .childChannelInitializer { channel in
                accepted.withLock { $0 = channel }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(recorder)
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        do {
            client = try BlockingClient(
                connectingTo: SocketAddress(host: "127.0.0.1", port: UInt16(server.localAddress!.port!)))
        } catch {
            try? server.close().wait()
            throw error
        }
    }

    /// The accepted channel, waiting until it is active.
    func acceptedChannel(sourceLocation: SourceLocation = #_sourceLocation) throws -> Channel {
        #expect(eventually { accepted.withLock { $0?.isActive } == true }, sourceLocation: sourceLocation)
        return try #require(accepted.withLock { $0 }, sourceLocation: sourceLocation)
    }

    /// Closes the client's socket (once).
    func closeClient() {
        guard !clientClosed else { return }
        clientClosed = true
        client.close()
    }
}

/// Runs `body` with a ``RecordingServer`` on a new group (the bootstrap set up by `configure`),
/// then closes client, server and group, and expects every descriptor opened meanwhile to be
/// closed again (``withGroupLeavingNoDescriptors(sourceLocation:_:)``).
func withRecordingServer(
    sourceLocation: SourceLocation = #_sourceLocation,
    configure: (RingPortServerBootstrap) -> RingPortServerBootstrap = { $0 },
    _ body: (RecordingServer) throws -> Void
) throws {
    try withGroupLeavingNoDescriptors(sourceLocation: sourceLocation) { group in
        let fixture = try RecordingServer(group: group, configure: configure)
        defer {
            fixture.closeClient()
            try? fixture.server.close().wait()
        }
        try body(fixture)
    }
}
