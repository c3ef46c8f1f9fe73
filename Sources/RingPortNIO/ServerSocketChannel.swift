import Glibc
import NIOCore
import RingPort
import SystemPackage

/// A listening TCP socket as a SwiftNIO `Channel` on the completion port: a `read()` arms the
/// accept, and each accepted connection becomes a ``SocketChannel`` on the next loop of the child
/// group and is fired as `channelRead` (the server bootstrap's acceptor registers it).
///
/// ## Accepts
/// Where the kernel has it (``IOURingFeatures/multishotAccept``), the accept is one multishot
/// accept that stays armed while reads keep coming (with `autoRead`, every `channelReadComplete`
/// asks for the next): one submission for a burst of connections, as the completion-port server
/// does. Once the pipeline stops asking, it is cancelled; connections the kernel accepted before
/// the cancellation took effect are still fired. Elsewhere (the epoll backend, older kernels),
/// each `read()` posts one single accept (`IORING_OP_ACCEPT`).
///
/// Errors of an accept (`EMFILE`, `ENFILE`, `ENOMEM`, …) are fired as `errorCaught` and the
/// next accept waits 100 ms; the listener stays open. `ECONNABORTED` (a connection reset before
/// it was accepted) is skipped.
///
/// Threading and ownership as in ``BaseChannel``.
final class ServerSocketChannel: BaseChannel, Channel, ChannelCore, @unchecked Sendable {
    // @unchecked: see BaseChannel.

    /// The loops the accepted connections go to.
    let childGroup: RingPortEventLoopGroup
    private let acceptContext = IOContext(capacity: 0)
    /// Whether the accept is one multishot accept (fixed when the channel is made).
    private let acceptsMultishot: Bool
    /// An accept is posted (until its last completion).
    @exclusivity(unchecked) private var accepting = false
    /// The posted multishot accept is being cancelled: the pipeline stopped asking for reads.
    @exclusivity(unchecked) private var acceptCancelRequested = false
    @exclusivity(unchecked) private var readPending = false
    @exclusivity(unchecked) private var backlog: Int32 = 128

    init(
        family: Int32, loop: RingPortEventLoop, group: RingPortEventLoopGroup, childGroup: RingPortEventLoopGroup
    ) throws {
        self.childGroup = childGroup
        acceptsMultishot = loop.port.features.multishotAccept
        try super.init(descriptor: NIOSocketCalls.makeSocket(family: family), loop: loop, group: group)
        acceptContext.userValue = CompletionTarget.serverSocketChannel.rawValue
        acceptContext.attachment = self
        makePipeline(for: self)
    }

    // MARK: Channel

    var parent: (any Channel)? { nil }
    var _channelCore: ChannelCore { self }
    var isWritable: Bool { false }

    override func setOption0<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
        guard lifecycle.isOpen else { throw ChannelError.ioOnClosedChannel }
        if option is ChannelOptions.Types.BacklogOption {
            backlog = value as! Int32
        } else {
            try super.setOption0(option, value: value)
        }
    }

    override func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        guard lifecycle.isOpen else { throw ChannelError.ioOnClosedChannel }
        if option is ChannelOptions.Types.BacklogOption { return backlog as! Option.Value }
        return try super.getOption0(option)
    }

    // MARK: ChannelCore (on the loop)

    func remoteAddress0() throws -> NIOCore.SocketAddress {
        throw ChannelError.operationUnsupported
    }

    func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    /// Binds and listens; the channel becomes active and, with `autoRead`, accepts.
    func bind0(to address: NIOCore.SocketAddress, promise: EventLoopPromise<Void>?) {
        guard lifecycle.state == .registered else {
            promise?.fail(notNowError)
            return
        }
        do {
            try NIOSocketCalls.bind(handle.descriptor, to: address)
            try NIOSocketCalls.listen(handle.descriptor, backlog: backlog)
        } catch {
            promise?.fail(error)
            return
        }
        cacheAddresses()
        transition(.activate, promise: promise)
        if autoRead { channelPipeline.syncOperations.read() }
    }

    func connect0(to address: NIOCore.SocketAddress, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    func flush0() {}

    func read0() {
        guard lifecycle.isActive else { return }
        readPending = true
        if !accepting { postAccept() }
    }

    func close0(error: Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard lifecycle.isOpen else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        guard mode == .all else {
            promise?.fail(ChannelError.operationUnsupported)
            return
        }
        close(promise: promise)
    }

    func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    /// An accepted channel reached the end of the pipeline: registered already (by the
    /// bootstrap's acceptor, which forwards it to an async listener afterwards), or registered
    /// here, as NIOPosix's listener does, so that a pipeline of the application's own that
    /// forwards its children still serves them.
    func channelRead0(_ data: NIOAny) {
        guard let child = unwrapData(data, as: (any Channel).self) as? SocketChannel else { return }
        child.loop.execute {
            guard child.lifecycle.state == .fresh else { return }
            child.register().whenComplete { result in
                switch result {
                case .success: child.becomeActive()
                case .failure: child.close(promise: nil)
                }
            }
        }
    }

    func errorCaught0(error: Error) {}

    // MARK: Accepts (on the loop)

    private func postAccept() {
        accepting = true
        acceptCancelRequested = false
        do {
            if acceptsMultishot {
                try loop.port.acceptMultishot(on: handle, context: acceptContext)
            } else {
                try loop.port.accept(on: handle, context: acceptContext)
            }
        } catch {
            accepting = false
            channelPipeline.syncOperations.fireErrorCaught(NIOSocketCalls.ioError(error))
            close(promise: nil)
        }
    }

    /// An accept's completion (of a multishot accept: one of them).
    func complete(_ completion: Completion) {
        if !completion.hasMore { accepting = false }
        guard lifecycle.isOpen else {
            if let descriptor = completion.acceptedDescriptor { _ = SystemCall.close(descriptor) }
            // The link to the channel goes with the accept's last completion.
            if !accepting { acceptContext.attachment = nil }
            return
        }
        let pipeline = channelPipeline.syncOperations
        if let descriptor = completion.acceptedDescriptor {
            readPending = false
            let childLoop = childGroup.nextRingLoop()
            do {
                let child = try SocketChannel(descriptor: descriptor, loop: childLoop, group: childGroup, parent: self)
                pipeline.fireChannelRead(NIOAny(child as any Channel))
            } catch {
                pipeline.fireErrorCaught(NIOSocketCalls.ioError(error))
            }
            pipeline.fireChannelReadComplete()
            if autoRead && lifecycle.isActive { pipeline.read() }
            stopAcceptingUnlessAsked()
        } else if let error = completion.error {
            if completion.isCancelled || error == .connectionAbort {
                if readPending && !accepting { postAccept() }
                return
            }
            pipeline.fireErrorCaught(IOError(errnoCode: error.rawValue, reason: "accept"))
            // Out of descriptors or memory (which ends a multishot accept): try again later
            // rather than spin.
            stopAcceptingUnlessAsked()
            loop.scheduleTask(in: .milliseconds(100)) { [self] in
                if readPending && !accepting && lifecycle.isActive { postAccept() }
            }
        }
    }

    /// Cancels an armed multishot accept once the pipeline no longer asks for reads (it is
    /// posted again at the next `read()`, after its last completion).
    private func stopAcceptingUnlessAsked() {
        guard accepting, acceptsMultishot, !readPending, !acceptCancelRequested, lifecycle.isActive else { return }
        acceptCancelRequested = true
        // An error here means the ring no longer takes submissions (the port is closing): the
        // accept is cancelled with everything else.
        _ = try? loop.port.cancel(acceptContext)
    }

    private func close(promise: EventLoopPromise<Void>?) {
        loop.port.close(handle)
        readPending = false
        transition(.close, promise: promise)
        finishClose(core: self)
        if !accepting { acceptContext.attachment = nil }
    }
}
