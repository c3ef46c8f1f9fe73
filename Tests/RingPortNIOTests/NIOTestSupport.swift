import NIOCore
import RingPort
import RingPortNIO
import RingPortTestSupport
import Synchronization

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
    func errorCaught(context: ChannelHandlerContext, error: Error) { record("error") }

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
