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
        let loop = group.nextRingLoop()
        do {
            return bind(to: try NIOCore.SocketAddress.makeAddressResolvingHost(host, port: port), on: loop)
        } catch {
            return loop.makeFailedFuture(error)
        }
    }

    /// Binds to `address`.
    public func bind(to address: NIOCore.SocketAddress) -> EventLoopFuture<Channel> {
        bind(to: address, on: group.nextRingLoop())
    }

    private func bind(to address: NIOCore.SocketAddress, on loop: RingPortEventLoop) -> EventLoopFuture<Channel> {
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
        let acceptor = Acceptor(childInitializer: childInitializer, childOptions: childOptions)
        let serverOptions = self.serverOptions
        return loop.flatSubmit {
            serverOptions.applyAllChannelOptions(to: channel).flatMap {
                serverInitializer?(channel) ?? loop.makeSucceededVoidFuture()
            }.flatMapThrowing {
                try channel.pipeline.syncOperations.addHandler(acceptor)
            }.flatMap {
                channel.register()
            }.flatMap {
                channel.bind(to: address)
            }.map {
                channel as Channel
            }.flatMapError { error in
                channel.close(promise: nil)
                return loop.makeFailedFuture(error)
            }
        }
    }

    /// The listener's last handler: sets up each accepted channel and registers it on its loop.
    private final class Acceptor: ChannelInboundHandler, RemovableChannelHandler, Sendable {
        typealias InboundIn = Channel

        let childInitializer: (@Sendable (Channel) -> EventLoopFuture<Void>)?
        let childOptions: ChannelOptions.Storage

        init(childInitializer: (@Sendable (Channel) -> EventLoopFuture<Void>)?, childOptions: ChannelOptions.Storage) {
            self.childInitializer = childInitializer
            self.childOptions = childOptions
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let child = unwrapInboundIn(data)
            let childInitializer = self.childInitializer
            let childOptions = self.childOptions
            child.eventLoop.execute {
                childOptions.applyAllChannelOptions(to: child).flatMap {
                    childInitializer?(child) ?? child.eventLoop.makeSucceededVoidFuture()
                }.flatMap {
                    child.register()
                }.whenComplete { result in
                    switch result {
                    case .success:
                        (child as? SocketChannel)?.becomeActive()
                    case .failure:
                        child.close(promise: nil)
                    }
                }
            }
        }
    }
}
