import NIOCore
import RingPort

/// Makes an outbound TCP channel on a ``RingPortEventLoopGroup``, in the shape of NIOPosix's
/// `ClientBootstrap`.
///
/// The channel is made on the group's next loop, gets its options and initializer, is
/// registered, then connects (an `IORING_OP_CONNECT` on the loop's ring); the future succeeds
/// once connected (the channel is active and, with `autoRead`, reads), or fails with the
/// connect's `IOError` (e.g. `ECONNREFUSED`) or `ChannelError.connectTimeout`.
///
/// Thread-safety: configure it on one thread; `connect` may run from any thread.
public final class RingPortClientBootstrap {
    private let group: RingPortEventLoopGroup
    private var initializer: (@Sendable (Channel) -> EventLoopFuture<Void>)?
    private var options = ChannelOptions.Storage()
    private var timeout = TimeAmount.seconds(10)

    /// A bootstrap whose channels use `group`'s loops.
    public init(group: RingPortEventLoopGroup) {
        self.group = group
    }

    /// Runs on each channel before it is registered (add its handlers here).
    public func channelInitializer(_ initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) -> Self {
        self.initializer = initializer
        return self
    }

    /// An option of each channel (`.socketOption(.tcp_nodelay)`, `.autoRead`, …).
    public func channelOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> Self {
        options.append(key: option, value: value)
        return self
    }

    /// How long a connect may take (default 10 s).
    public func connectTimeout(_ timeout: TimeAmount) -> Self {
        self.timeout = timeout
        return self
    }

    /// Connects to `host` (resolved, first address) and `port`.
    public func connect(host: String, port: Int) -> EventLoopFuture<Channel> {
        do {
            return connect(to: try NIOCore.SocketAddress.makeAddressResolvingHost(host, port: port))
        } catch {
            // Only here a loop is picked for the failure: `connect(to:)` picks the channel's, so
            // that each connect advances the round-robin once.
            return group.nextRingLoop().makeFailedFuture(error)
        }
    }

    /// Connects to `address`.
    public func connect(to address: NIOCore.SocketAddress) -> EventLoopFuture<Channel> {
        let initializer = self.initializer
        return connect(to: address) { channel in
            (initializer?(channel) ?? channel.eventLoop.makeSucceededVoidFuture()).map { channel }
        }
    }

    /// Connects to `host` and `port` and returns what `channelInitializer` made of the channel
    /// (typically a `NIOAsyncChannel` wrapping it), as NIOPosix's `ClientBootstrap` does. The
    /// initializer runs before the channel is registered (instead of the bootstrap's own).
    public func connect<Output: Sendable>(
        host: String, port: Int, channelInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Output>
    ) async throws -> Output {
        let address = try NIOCore.SocketAddress.makeAddressResolvingHost(host, port: port)
        return try await connect(to: address, channelInitializer: channelInitializer)
    }

    /// Connects to `address`; see ``connect(host:port:channelInitializer:)``.
    public func connect<Output: Sendable>(
        to address: NIOCore.SocketAddress, channelInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Output>
    ) async throws -> Output {
        try await connect(to: address, initialize: channelInitializer).get()
    }

    private func connect<Output: Sendable>(
        to address: NIOCore.SocketAddress, initialize: @escaping @Sendable (Channel) -> EventLoopFuture<Output>
    ) -> EventLoopFuture<Output> {
        let loop = group.nextRingLoop()
        let channel: SocketChannel
        do {
            let descriptor = try NIOSocketCalls.makeSocket(family: address.protocol.rawValue)
            channel = try SocketChannel(descriptor: descriptor, loop: loop, group: group, parent: nil)
        } catch let error as RingPortError {
            return loop.makeFailedFuture(NIOSocketCalls.ioError(error))
        } catch {
            return loop.makeFailedFuture(error)
        }
        let options = self.options
        let timeout = self.timeout
        return loop.flatSubmit {
            options.applyAllChannelOptions(to: channel).flatMap {
                initialize(channel)
            }.flatMap { output in
                channel.register().flatMap {
                    let connected = loop.makePromise(of: Void.self)
                    let timer = loop.scheduleTask(in: timeout) {
                        connected.fail(ChannelError.connectTimeout(timeout))
                        channel.close(promise: nil)
                    }
                    channel.connect(to: address, promise: connected)
                    connected.futureResult.whenComplete { _ in timer.cancel() }
                    return connected.futureResult
                }.map {
                    output
                }
            }.flatMapError { error in
                channel.close(promise: nil)
                return loop.makeFailedFuture(error)
            }
        }
    }
}
