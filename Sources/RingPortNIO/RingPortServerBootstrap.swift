import NIOCore
import RingPort

/// Makes a listening TCP channel on a ``RingPortEventLoopGroup``, in the shape of NIOPosix's
/// `ServerBootstrap`: moving a server from NIOPosix is a change of bootstrap (and group) type.
///
/// ```swift
/// let group = try RingPortEventLoopGroup()
/// let server = try await RingPortServerBootstrap(group: group)
///     .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
///     .childChannelInitializer { channel in
///         channel.eventLoop.makeCompletedFuture {
///             try channel.pipeline.syncOperations.addHandler(EchoHandler())
///         }
///     }
///     .bind(host: "127.0.0.1", port: 8080)
///     .get()
/// ```
///
/// Each accepted connection is a channel on the next loop of the child group (round-robin),
/// with the child options applied and the child initializer run before it is registered; it
/// becomes active (and reads, with `autoRead`) once registered.
///
/// Thread-safety: configure it on one thread; `bind` may run from any thread.
public final class RingPortServerBootstrap {
    private let group: RingPortEventLoopGroup
    private let childGroup: RingPortEventLoopGroup
    private var serverInitializer: (@Sendable (Channel) -> EventLoopFuture<Void>)?
    private var childInitializer: (@Sendable (Channel) -> EventLoopFuture<Void>)?
    private var serverOptions = ChannelOptions.Storage()
    private var childOptions = ChannelOptions.Storage()

    /// A bootstrap whose listener and connections use `group`'s loops.
    public convenience init(group: RingPortEventLoopGroup) {
        self.init(group: group, childGroup: group)
    }

    /// A bootstrap whose listener runs on `group` and connections on `childGroup`.
    public init(group: RingPortEventLoopGroup, childGroup: RingPortEventLoopGroup) {
        self.group = group
        self.childGroup = childGroup
    }

    /// Runs on the listening channel before it binds.
    public func serverChannelInitializer(_ initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) -> Self
    {
        serverInitializer = initializer
        return self
    }

    /// Runs on each accepted channel before it is registered (add its handlers here).
    public func childChannelInitializer(_ initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) -> Self {
        childInitializer = initializer
        return self
    }

    /// An option of the listening channel (`.socketOption(.so_reuseaddr)`, `.backlog`, …).
    public func serverChannelOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> Self {
        serverOptions.append(key: option, value: value)
        return self
    }

    /// An option of every accepted channel (`.socketOption(.tcp_nodelay)`, `.autoRead`,
    /// `.writeBufferWaterMark`, `.allowRemoteHalfClosure`, …).
    public func childChannelOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> Self {
        childOptions.append(key: option, value: value)
        return self
    }

    /// Binds to `host` (resolved, first address) and `port` (0: any free port).
    public func bind(host: String, port: Int) -> EventLoopFuture<Channel> {
        do {
            return bind(to: try NIOCore.SocketAddress.makeAddressResolvingHost(host, port: port))
        } catch {
            // Only here a loop is picked for the failure: `bind(to:)` picks the listener's.
            return group.nextRingLoop().makeFailedFuture(error)
        }
    }

    /// Binds to `address`.
    public func bind(to address: NIOCore.SocketAddress) -> EventLoopFuture<Channel> {
        let acceptor = Acceptor(childOptions: childOptions, prepare: childInitializer, forwardsChildren: false)
        return bind(to: address) { channel in
            try channel.pipeline.syncOperations.addHandler(acceptor)
            return channel as Channel
        }
    }

    /// Binds to `host` and `port` and returns the listener as a `NIOAsyncChannel` whose inbound
    /// sequence yields, for each accepted connection, what `childChannelInitializer` made of it
    /// (typically a `NIOAsyncChannel` wrapping it), as NIOPosix's `ServerBootstrap` does. The
    /// initializer runs on the connection's loop before it is registered, so nothing it receives
    /// is missed.
    public func bind<Output: Sendable>(
        host: String, port: Int,
        childChannelInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Output>
    ) async throws -> NIOAsyncChannel<Output, Never> {
        let address = try NIOCore.SocketAddress.makeAddressResolvingHost(host, port: port)
        return try await bind(to: address, childChannelInitializer: childChannelInitializer)
    }

    /// Binds to `address`; see ``bind(host:port:childChannelInitializer:)``.
    public func bind<Output: Sendable>(
        to address: NIOCore.SocketAddress,
        childChannelInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Output>
    ) async throws -> NIOAsyncChannel<Output, Never> {
        let outputs = ChildOutputs<Output>()
        let acceptor = Acceptor(
            childOptions: childOptions,
            prepare: { child in
                let output = childChannelInitializer(child)
                outputs.store(output, for: child)
                return output.map { _ in () }
            },
            forwardsChildren: true,
            discard: { child in _ = outputs.take(for: child) })
        return try await bind(to: address) { channel in
            try channel.pipeline.syncOperations.addHandler(acceptor)
            return try NIOAsyncChannel<Output, Never>._wrapAsyncChannelWithTransformations(
                wrappingChannelSynchronously: channel,
                channelReadTransformation: { child in outputs.take(for: child) })
        }.get()
    }

    /// Makes the listener on the next loop, applies the server options and initializer, lets
    /// `finish` add its last handlers and make the result, registers and binds.
    private func bind<Result: Sendable>(
        to address: NIOCore.SocketAddress, finish: @escaping @Sendable (ServerSocketChannel) throws -> Result
    ) -> EventLoopFuture<Result> {
        let loop = group.nextRingLoop()
        let channel: ServerSocketChannel
        do {
            channel = try ServerSocketChannel(
                family: address.protocol.rawValue, loop: loop, group: group, childGroup: childGroup)
        } catch let error as RingPortError {
            return loop.makeFailedFuture(NIOSocketCalls.ioError(error))
        } catch {
            return loop.makeFailedFuture(error)
        }
        let serverInitializer = self.serverInitializer
        let serverOptions = self.serverOptions
        return loop.flatSubmit {
            serverOptions.applyAllChannelOptions(to: channel).flatMap {
                serverInitializer?(channel) ?? loop.makeSucceededVoidFuture()
            }.flatMapThrowing {
                try finish(channel)
            }.flatMap { result in
                channel.register().flatMap {
                    channel.bind(to: address)
                }.map {
                    result
                }
            }.flatMapError { error in
                channel.close(promise: nil)
                return loop.makeFailedFuture(error)
            }
        }
    }

    /// The listener's acceptor: on each accepted channel's loop, applies the child options and
    /// runs `prepare` (the child initializer), then registers the channel, which becomes active
    /// (and reads, with `autoRead`); with `forwardsChildren`, then fires it on down the
    /// listener's pipeline (to the async listener's handler).
    private final class Acceptor: ChannelInboundHandler, RemovableChannelHandler, Sendable {
        typealias InboundIn = Channel
        typealias InboundOut = Channel

        let childOptions: ChannelOptions.Storage
        let prepare: (@Sendable (Channel) -> EventLoopFuture<Void>)?
        let forwardsChildren: Bool
        /// Forgets what `prepare` kept for a child that failed to come up (it is closed).
        let discard: (@Sendable (Channel) -> Void)?

        init(
            childOptions: ChannelOptions.Storage, prepare: (@Sendable (Channel) -> EventLoopFuture<Void>)?,
            forwardsChildren: Bool, discard: (@Sendable (Channel) -> Void)? = nil
        ) {
            self.childOptions = childOptions
            self.prepare = prepare
            self.forwardsChildren = forwardsChildren
            self.discard = discard
        }

        /// A failed accept (`EMFILE`, `ENFILE`, `ENOMEM`: the listener tries again by itself
        /// after a pause) stops here when the children go on to the async listener: there it
        /// would end the inbound sequence, and the server with it (NIOPosix's async bootstrap
        /// drops these errors too). Other errors, and all of them for a callback-style server,
        /// go on down the pipeline.
        func errorCaught(context: ChannelHandlerContext, error: Error) {
            if forwardsChildren && error is IOError { return }
            context.fireErrorCaught(error)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let child = unwrapInboundIn(data)
            let prepare = self.prepare
            let discard = self.discard
            let childOptions = self.childOptions
            let forward = forwardsChildren ? NIOLoopBound(context, eventLoop: context.eventLoop) : nil
            child.eventLoop.execute {
                childOptions.applyAllChannelOptions(to: child).flatMap {
                    prepare?(child) ?? child.eventLoop.makeSucceededVoidFuture()
                }.flatMap {
                    child.register()
                }.whenComplete { result in
                    switch result {
                    case .success:
                        (child as? SocketChannel)?.becomeActive()
                        if let forward {
                            forward.eventLoop.execute { forward.value.fireChannelRead(NIOAny(child)) }
                        }
                    case .failure:
                        discard?(child)
                        child.close(promise: nil)
                    }
                }
            }
        }
    }

    /// What the async child initializer made of each accepted channel, from the child's loop
    /// (where it runs) to the listener's (where the async listener takes it).
    ///
    /// Thread-safety: any thread (a lock).
    private final class ChildOutputs<Output: Sendable>: Sendable {
        private let outputs = LockedValue<[ObjectIdentifier: EventLoopFuture<Output>]>([:])

        func store(_ output: EventLoopFuture<Output>, for child: Channel) {
            outputs.withLock { $0[ObjectIdentifier(child)] = output }
        }

        func take(for child: Channel) -> EventLoopFuture<Output> {
            outputs.withLock { $0.removeValue(forKey: ObjectIdentifier(child)) }
                ?? child.eventLoop.makeFailedFuture(ChannelError.inappropriateOperationForState)
        }
    }
}
