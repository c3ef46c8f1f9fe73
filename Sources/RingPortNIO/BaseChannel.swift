import Glibc
import NIOCore
import RingPort
import Synchronization

/// What a RingPortNIO listener channel and connection channel share: the loop, the pipeline,
/// the lifecycle, the options, the close future, the addresses, the socket's handle on the
/// completion port.
///
/// Threading: the channel's state is loop-confined — its `ChannelCore` methods and completions
/// run on its loop (one thread at a time, see ``RingPortEventLoop``). What SwiftNIO lets any
/// thread read (`isActive`, `isWritable`, the addresses) is atomic or behind a lock.
///
/// Ownership: the channel owns its socket through its handle from init; the handle is closed by
/// the channel's close (or, if it is never registered, when the channel goes).
class BaseChannel: @unchecked Sendable {
    // @unchecked: loop-confined state (documented above), the rest immutable, atomic or locked.
    // The loop-confined properties skip Swift's dynamic exclusivity checks
    // (@exclusivity(unchecked)): one thread at a time touches them, by the loop's design.

    /// The channel's loop.
    let loop: RingPortEventLoop
    /// The group (configuration, and the loops of a listener's children).
    let group: RingPortEventLoopGroup
    /// The socket's handle (on the loop's ring).
    let handle: IOHandle
    /// The channel's pipeline (set right after init).
    @exclusivity(unchecked) private(set) var channelPipeline: ChannelPipeline!
    let closePromise: EventLoopPromise<Void>
    @exclusivity(unchecked) var lifecycle = ChannelLifecycle()
    private let activeFlag = Atomic<Bool>(false)
    private let addresses = LockedValue<(local: NIOCore.SocketAddress?, remote: NIOCore.SocketAddress?)>((nil, nil))
    /// `ChannelOptions.autoRead`.
    @exclusivity(unchecked) var autoRead = true
    /// `ChannelOptions.maxMessagesPerRead` (kept for `getOption`: each completion is one read).
    var maxMessagesPerRead: UInt = 4
    /// `ChannelOptions.recvAllocator` (kept for `getOption`: receives use provided buffers).
    var receiveAllocator: any RecvByteBufferAllocator = AdaptiveRecvByteBufferAllocator()

    /// Takes `descriptor` and associates it with the loop's ring; closes it if that fails.
    init(descriptor: Int32, loop: RingPortEventLoop, group: RingPortEventLoopGroup) throws(RingPortError) {
        self.loop = loop
        self.group = group
        do {
            handle = try loop.port.associate(descriptor: descriptor, ring: loop.ring)
        } catch {
            _ = SystemCall.close(descriptor)
            throw error
        }
        closePromise = loop.makePromise(of: Void.self)
    }

    /// Sets the pipeline; called by the subclass once `self` is whole.
    func makePipeline(for channel: any Channel) {
        channelPipeline = ChannelPipeline(channel: channel)
    }

    deinit {
        if !handle.isClosed { loop.port.close(handle) }
    }

    // MARK: Channel members both kinds share

    var allocator: ByteBufferAllocator { ByteBufferAllocator() }
    var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }
    var pipeline: ChannelPipeline { channelPipeline }
    var eventLoop: EventLoop { loop }

    // MARK: State readable from any thread

    var isActive: Bool { activeFlag.load(ordering: .relaxed) }

    var localAddress: NIOCore.SocketAddress? { addresses.withLock { $0.local } }
    var remoteAddress: NIOCore.SocketAddress? { addresses.withLock { $0.remote } }

    /// Reads the socket's addresses into the cache (once bound or connected).
    func cacheAddresses() {
        let local = try? NIOSocketCalls.localAddress(of: handle.descriptor)
        let remote = try? NIOSocketCalls.peerAddress(of: handle.descriptor)
        addresses.withLock { $0 = (local, remote) }
    }

    // MARK: Lifecycle (on the loop)

    /// Applies a lifecycle event and fires what it calls for; false when not allowed now.
    @discardableResult
    func transition(_ event: ChannelLifecycle.Event, promise: EventLoopPromise<Void>? = nil) -> Bool {
        guard let callouts = enter(event) else { return false }
        fire(callouts, promise: promise)
        return true
    }

    /// The first half of ``transition(_:promise:)``: applies the event and returns what to fire,
    /// or nil when it is not allowed now. For a caller with more to settle before user code runs
    /// (a close fails its writes in between, and a callback of theirs that closes again must
    /// find the channel closed).
    func enter(_ event: ChannelLifecycle.Event) -> ChannelLifecycle.Callouts? {
        guard let callouts = lifecycle.handle(event) else { return nil }
        activeFlag.store(lifecycle.isActive, ordering: .relaxed)
        if event == .register, let channel = self as? any Channel { loop.register(channel) }
        return callouts
    }

    /// The second half of ``transition(_:promise:)``: succeeds `promise`, then fires `callouts`.
    func fire(_ callouts: ChannelLifecycle.Callouts, promise: EventLoopPromise<Void>?) {
        promise?.succeed(())
        let pipeline = channelPipeline!.syncOperations
        if callouts.contains(.registered) { pipeline.fireChannelRegistered() }
        if callouts.contains(.active) { pipeline.fireChannelActive() }
        if callouts.contains(.inactive) { pipeline.fireChannelInactive() }
        if callouts.contains(.unregistered) { pipeline.fireChannelUnregistered() }
    }

    /// The end of a close: later on the loop (handlers may still be walking the pipeline), the
    /// handlers are removed and the close future succeeds.
    func finishClose(core: some ChannelCore & Sendable) {
        if let channel = self as? any Channel { loop.unregister(channel) }
        loop.execute { [self] in
            core.removeHandlers(pipeline: channelPipeline)
            closePromise.succeed(())
        }
    }

    /// The error of an operation the lifecycle does not allow now: `ioOnClosedChannel` once
    /// closed, else `inappropriateOperationForState`.
    var notNowError: ChannelError {
        lifecycle.isOpen ? .inappropriateOperationForState : .ioOnClosedChannel
    }

    // MARK: ChannelCore parts both kinds share (on the loop)

    func localAddress0() throws -> NIOCore.SocketAddress {
        guard lifecycle.isOpen else { throw ChannelError.ioOnClosedChannel }
        return try NIOSocketCalls.localAddress(of: handle.descriptor)
    }

    func register0(promise: EventLoopPromise<Void>?) {
        guard transition(.register, promise: promise) else {
            promise?.fail(notNowError)
            return
        }
    }

    // MARK: Options

    /// Sets an option on the loop (at once when called there).
    func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        if loop.inEventLoop { return loop.makeCompletedFuture { try setOption0(option, value: value) } }
        return loop.submit { try self.setOption0(option, value: value) }
    }

    /// Reads an option on the loop (at once when called there).
    func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        if loop.inEventLoop { return loop.makeCompletedFuture { try getOption0(option) } }
        return loop.submit { try self.getOption0(option) }
    }

    /// Sets an option both channel kinds know (on the loop); subclasses handle theirs first.
    func setOption0<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
        guard lifecycle.isOpen else { throw ChannelError.ioOnClosedChannel }
        switch option {
        case let option as ChannelOptions.Types.SocketOption:
            try NIOSocketCalls.setOption(
                handle.descriptor, level: Int32(option.level), name: option.name,
                value: Int32(truncatingIfNeeded: value as! SocketOptionValue))
        case is ChannelOptions.Types.AutoReadOption:
            let enable = value as! Bool
            let wasOff = !autoRead
            autoRead = enable
            if enable && wasOff && lifecycle.isActive { channelPipeline.syncOperations.read() }
        case is ChannelOptions.Types.MaxMessagesPerReadOption:
            maxMessagesPerRead = value as! UInt
        case is ChannelOptions.Types.RecvAllocatorOption:
            receiveAllocator = value as! any RecvByteBufferAllocator
        case is ChannelOptions.Types.WriteSpinOption:
            break  // completion-based sends do not spin
        default:
            throw ChannelError.operationUnsupported
        }
    }

    /// Reads an option both channel kinds know (on the loop); subclasses handle theirs first.
    func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        guard lifecycle.isOpen else { throw ChannelError.ioOnClosedChannel }
        switch option {
        case let option as ChannelOptions.Types.SocketOption:
            let value = try NIOSocketCalls.option(handle.descriptor, level: Int32(option.level), name: option.name)
            return SocketOptionValue(value) as! Option.Value
        case is ChannelOptions.Types.AutoReadOption:
            return autoRead as! Option.Value
        case is ChannelOptions.Types.MaxMessagesPerReadOption:
            return maxMessagesPerRead as! Option.Value
        case is ChannelOptions.Types.RecvAllocatorOption:
            return receiveAllocator as! Option.Value
        case is ChannelOptions.Types.WriteSpinOption:
            return UInt(0) as! Option.Value
        default:
            throw ChannelError.operationUnsupported
        }
    }
}
