import NIOCore

/// Writes back every byte it reads.
///
/// Reads are written as they arrive and flushed once per read burst (`channelReadComplete`), so
/// several messages read in one event loop tick go out in one `writev`. Reading pauses while the
/// channel is not writable (more than the write-buffer high-water mark is waiting), so a peer that
/// sends without reading cannot make the server buffer without bound. Once the peer has finished
/// sending (half-closure), the connection is closed after everything it sent has been echoed.
final class EchoPipelineHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// A `read` held back while the channel was not writable, issued when it becomes writable.
    private var readPending = false

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // The buffer goes straight back out; no unwrapping or copying is needed.
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && readPending {
            readPending = false
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, event == .inputClosed else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        // The peer will send nothing more. Writes complete in order, so an empty write's promise
        // completes once everything written before it has gone out: close then.
        let drained = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: drained)
        drained.futureResult.assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Connection reset and the like: nothing to recover, drop the connection.
        context.close(promise: nil)
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        // Back-pressure: stop reading while echoed data piles up unsent.
        if context.channel.isWritable {
            context.read()
        } else {
            readPending = true
        }
    }
}
