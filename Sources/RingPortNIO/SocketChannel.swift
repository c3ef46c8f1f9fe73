import DequeModule
import Glibc
import NIOCore
import RingPort
import Synchronization
import SystemPackage

/// A TCP connection as a SwiftNIO `Channel` on the completion port: accepted by a
/// ``ServerSocketChannel`` or connected by ``RingPortClientBootstrap``.
///
/// Reads: the first `read()` (from `autoRead` after every `channelReadComplete`, or the
/// application's own) arms a multishot receive into the ring's provided buffers, which stays
/// armed while the pipeline keeps asking for reads: no submission per arrival, and a waiting
/// connection holds no buffer. Each arrival is copied once into a `ByteBuffer` and fired as
/// `channelRead` + `channelReadComplete`. When an arrival finds no read asked for (a handler
/// holding reads back, `autoRead` off), the receive is cancelled and what it delivered meanwhile
/// waits in the channel for the next `read()` — which is how a handler that stops reading stops
/// the socket. Without multishot receive (older kernels) each `read()` posts one receive into a
/// provided buffer; without provided buffers (the epoll backend) one into the channel's own.
///
/// Writes: `write` queues the `ByteBuffer` (its storage is what the kernel sends from: no copy)
/// and `flush` sends what was flushed, up to ``gatheredBuffers`` buffers in one `sendmsg`;
/// one send is in flight at a time. Writability follows `writeBufferWaterMark` over the
/// queued bytes.
///
/// Threading and ownership as in ``BaseChannel``; the receive and send contexts belong to the
/// port while their operation is in flight, and carry the channel (`attachment`) until the
/// channel is closed and nothing is in flight.
final class SocketChannel: BaseChannel, Channel, ChannelCore, @unchecked Sendable {
    // @unchecked: see BaseChannel.

    /// The most buffers one send carries.
    static let gatheredBuffers = 16
    /// The most bytes one arming of the multishot receive delivers, where the kernel supports
    /// the limit (Linux 6.17): what can arrive after the pipeline stopped reading and before the
    /// receive's cancellation lands, so it bounds what waits in the channel. Elsewhere the bound
    /// is the ring's provided buffers.
    static let receiveLimit = 64 * 1024

    let parent: (any Channel)?
    private let receiveContext: IOContext
    private let sendContext: IOContext
    /// A receive is in flight (for a multishot one: until its last completion).
    @exclusivity(unchecked) private var receiving = false
    /// The pipeline asked for a read that has not delivered yet.
    @exclusivity(unchecked) private var readPending = false
    /// Whether receives are multishot (provided buffers and a kernel with multishot receive):
    /// one armed receive delivers arrival after arrival while the pipeline keeps reading.
    private let receivesMultishot: Bool
    /// The armed multishot receive was cancelled because nobody asked for a read.
    @exclusivity(unchecked) private var stopRequested = false
    /// Bytes that arrived while nobody asked for a read, delivered at the next `read()`.
    @exclusivity(unchecked) private var parked = Deque<ByteBuffer>()
    /// The peer's FIN arrived behind `parked`.
    @exclusivity(unchecked) private var parkedEnd = false
    @exclusivity(unchecked) private var deliveryScheduled = false
    @exclusivity(unchecked) private var inputClosed = false
    @exclusivity(unchecked) private var output = Output.open
    @exclusivity(unchecked) private var connectPromise: EventLoopPromise<Void>?
    @exclusivity(unchecked) private var connecting = false
    @exclusivity(unchecked) private var writes = Deque<PendingWrite>()
    /// How many of `writes`, from the front, were flushed.
    @exclusivity(unchecked) private var flushedCount = 0
    /// How many of `writes`, from the front, the send in flight carries (0: none in flight).
    @exclusivity(unchecked) private var inFlightCount = 0
    @exclusivity(unchecked) private var queuedBytes = 0
    /// The buffers of a gathered send, kept to reuse the array's storage.
    @exclusivity(unchecked) private var gathered: [UnsafeRawBufferPointer] = []
    /// The storage of the promises a send completion fulfils, kept to be reused.
    @exclusivity(unchecked) private var completedPromises: [EventLoopPromise<Void>] = []
    @exclusivity(unchecked) private var waterMark = ChannelOptions.Types.WriteBufferWaterMark(
        low: 32 * 1024, high: 64 * 1024)
    @exclusivity(unchecked) private var writable = true
    @exclusivity(unchecked) private var allowRemoteHalfClosure = false
    private let writableFlag = Atomic<Bool>(true)

    /// A queued write.
    private struct PendingWrite {
        var buffer: ByteBuffer
        /// Taken out and failed when the channel closes while the write is in flight (its
        /// buffer stays until the completion).
        var promise: EventLoopPromise<Void>?
    }

    /// The write side.
    private enum Output {
        case open
        /// `close(mode: .output)` was asked for: no more writes; the flushed ones are still
        /// sent, then the side is shut down and the promise succeeds.
        case closing(EventLoopPromise<Void>?)
        /// Shut down (or the channel closed).
        case shut
    }

    /// Takes a connected (accepted) or fresh socket.
    init(
        descriptor: Int32, loop: RingPortEventLoop, group: RingPortEventLoopGroup, parent: (any Channel)?
    ) throws(RingPortError) {
        self.parent = parent
        receivesMultishot = group.usesProvidedBuffers && loop.port.features.multishotReceive
        receiveContext = IOContext(capacity: group.usesProvidedBuffers ? 0 : group.configuration.receiveBufferSize)
        sendContext = IOContext(capacity: SocketChannel.gatheredBuffers * MemoryLayout<iovec>.stride)
        try super.init(descriptor: descriptor, loop: loop, group: group)
        for context in [receiveContext, sendContext] {
            context.userValue = CompletionTarget.socketChannel.rawValue
            context.attachment = self
        }
        makePipeline(for: self)
    }

    // MARK: Channel

    var _channelCore: ChannelCore { self }
    var isWritable: Bool { writableFlag.load(ordering: .relaxed) }

    var syncOptions: NIOSynchronousChannelOptions? { SynchronousOptions(channel: self) }

    private struct SynchronousOptions: NIOSynchronousChannelOptions {
        let channel: SocketChannel
        func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
            channel.loop.preconditionInEventLoop()
            try channel.setOption0(option, value: value)
        }
        func getOption<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
            channel.loop.preconditionInEventLoop()
            return try channel.getOption0(option)
        }
    }

    override func setOption0<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
        guard lifecycle.isOpen else { throw ChannelError.ioOnClosedChannel }
        switch option {
        case is ChannelOptions.Types.WriteBufferWaterMarkOption:
            waterMark = value as! ChannelOptions.Types.WriteBufferWaterMark
            updateWritability()
        case is ChannelOptions.Types.AllowRemoteHalfClosureOption:
            allowRemoteHalfClosure = value as! Bool
        case is ChannelOptions.Types.ConnectTimeoutOption:
            break  // the client bootstrap applies its own timeout
        default:
            try super.setOption0(option, value: value)
        }
    }

    override func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        guard lifecycle.isOpen else { throw ChannelError.ioOnClosedChannel }
        switch option {
        case is ChannelOptions.Types.WriteBufferWaterMarkOption:
            return waterMark as! Option.Value
        case is ChannelOptions.Types.AllowRemoteHalfClosureOption:
            return allowRemoteHalfClosure as! Option.Value
        default:
            return try super.getOption0(option)
        }
    }

    // MARK: ChannelCore (on the loop)

    func remoteAddress0() throws -> NIOCore.SocketAddress {
        guard lifecycle.isOpen else { throw ChannelError.ioOnClosedChannel }
        return try NIOSocketCalls.peerAddress(of: handle.descriptor)
    }

    func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) {
        register0(promise: promise)
        if lifecycle.isRegistered { becomeActive() }
    }

    /// An accepted connection: registered, now active (reads start with `autoRead`).
    func becomeActive() {
        // Registered and not closed: after a close the descriptor's number may be another
        // socket's.
        guard lifecycle.state == .registered else { return }
        cacheAddresses()
        guard transition(.activate) else { return }
        startActiveWork()
    }

    /// What waited for the channel to become active: the writes flushed meanwhile, and the
    /// reads (`autoRead`, or one the pipeline asked for).
    private func startActiveWork() {
        if flushedCount > 0 && inFlightCount == 0 { sendFlushedAndComplete() }
        guard lifecycle.isActive else { return }
        if autoRead {
            channelPipeline.syncOperations.read()
        } else if readPending {
            read0()
        }
    }

    func bind0(to address: NIOCore.SocketAddress, promise: EventLoopPromise<Void>?) {
        guard lifecycle.isOpen else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        do {
            try NIOSocketCalls.bind(handle.descriptor, to: address)
            promise?.succeed(())
        } catch {
            promise?.fail(error)
        }
    }

    func connect0(to address: NIOCore.SocketAddress, promise: EventLoopPromise<Void>?) {
        guard lifecycle.state == .registered else {
            promise?.fail(notNowError)
            return
        }
        guard !connecting else {
            promise?.fail(ChannelError.connectPending)
            return
        }
        do {
            try loop.port.connect(handle, to: NIOSocketCalls.portAddress(address), context: sendContext)
            connecting = true
            connectPromise = promise ?? loop.makePromise()
        } catch let error as RingPortError {
            promise?.fail(NIOSocketCalls.ioError(error))
        } catch {
            promise?.fail(error)
        }
    }

    func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard lifecycle.isOpen else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard case .open = output else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        guard case .byteBuffer(let buffer) = unwrapData(data, as: IOData.self) else {
            promise?.fail(ChannelError.operationUnsupported)  // file regions: not sent from files
            return
        }
        writes.append(PendingWrite(buffer: buffer, promise: promise))
        queuedBytes += buffer.readableBytes
        updateWritability()
    }

    func flush0() {
        guard lifecycle.isOpen else { return }
        flushedCount = writes.count
        // Before the channel is active (a client still connecting: the connect holds the send
        // context, and the socket cannot send yet) the flushed writes wait for the activation.
        guard lifecycle.isActive, inFlightCount == 0 else { return }
        sendFlushedAndComplete()
    }

    func read0() {
        guard lifecycle.isOpen, !inputClosed else { return }
        readPending = true
        // Before the channel is active the read waits for the activation.
        guard lifecycle.isActive else { return }
        if !parked.isEmpty || parkedEnd {
            scheduleParkedDelivery()
        } else if !receiving {
            postReceive()
        }
    }

    func close0(error: Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard lifecycle.isOpen else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        switch mode {
        case .all:
            close(error: error, promise: promise)
        case .output:
            guard case .open = output else {
                promise?.fail(ChannelError.outputClosed)
                return
            }
            // The input is closed already: both sides closed, the channel closes (as NIOPosix).
            if inputClosed {
                close(error: error, promise: promise)
                return
            }
            // What was flushed is still sent; what was not fails. The side shuts down, the
            // promise succeeds and `outputClosed` fires once the flushed writes are sent.
            output = .closing(promise)
            failWrites(from: flushedCount, error: ChannelError.outputClosed)
            shutDownOutputIfSent()
        case .input:
            guard !inputClosed else {
                promise?.fail(ChannelError.inputClosed)
                return
            }
            if case .shut = output {
                close(error: error, promise: promise)
                return
            }
            inputClosed = true
            readPending = false
            parked.removeAll()
            parkedEnd = false
            try? loop.port.shutdownReading(handle)
            if receiving { _ = try? loop.port.cancel(receiveContext) }
            promise?.succeed(())
            channelPipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
    }

    func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    func channelRead0(_ data: NIOAny) {
        // Reached the end of the pipeline unhandled: dropped, as in NIOPosix.
    }

    func errorCaught0(error: Error) {
        // Reached the end of the pipeline unhandled: dropped, as in NIOPosix.
    }

    // MARK: Completions (on the loop)

    /// A completion of the channel's receive, send or connect.
    func complete(_ completion: Completion) {
        switch completion.operation {
        case .read:
            received(completion)
        case .connect:
            connected(completion)
        default:
            sent(completion)
        }
        if !lifecycle.isOpen { releaseContextsIfIdle() }
    }

    private func postReceive() {
        receiving = true
        do {
            if receivesMultishot {
                try loop.port.receiveMultishot(handle, context: receiveContext, limit: SocketChannel.receiveLimit)
            } else if group.usesProvidedBuffers {
                try loop.port.receive(handle, context: receiveContext)
            } else {
                try loop.port.read(handle, into: receiveContext)
            }
        } catch {
            receiving = false
            fail(NIOSocketCalls.ioError(error))
        }
    }

    /// A receive's completion: bytes go to the pipeline if it asked for a read, else they wait
    /// (parked) for the next `read()`, and a multishot receive nobody asked for is cancelled.
    private func received(_ completion: Completion) {
        if !receivesMultishot || !completion.hasMore {
            receiving = false
            stopRequested = false
        }
        guard lifecycle.isOpen, !inputClosed else {
            // Closed, or the input was shut down (`close(mode: .input)`): nothing more is read.
            completion.receivedBuffer?.release()
            return
        }
        if let error = completion.error {
            // No bytes; a provided buffer named anyway (taken by the kernel for a receive that
            // then failed) goes straight back.
            completion.receivedBuffer?.release()
            if error == .noBufferSpace {
                // The ring's provided buffers are all out: they come back as the loops copy
                // them; try again a moment later rather than spin.
                loop.scheduleTask(in: .milliseconds(1)) { [self] in
                    if readPending && !receiving && lifecycle.isActive && !inputClosed { postReceive() }
                }
            } else if !completion.isCancelled {
                fail(IOError(errnoCode: error.rawValue, reason: "read"))
            } else if readPending && !receiving {
                postReceive()
            }
            return
        }
        let count = completion.bytesTransferred
        guard count > 0 else {
            completion.receivedBuffer?.release()
            if readPending && parked.isEmpty {
                inputEnded()
            } else {
                parkedEnd = true
            }
            return
        }
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        if let received = completion.receivedBuffer {
            _ = received.withUnsafeBytes { buffer.writeBytes(UnsafeRawBufferPointer(rebasing: $0.prefix(count))) }
            received.release()
        } else {
            _ = receiveContext.withUnsafeBytes { buffer.writeBytes(UnsafeRawBufferPointer(rebasing: $0.prefix(count))) }
        }
        if readPending && parked.isEmpty {
            deliver(CollectionOfOne(buffer))
        } else {
            parked.append(buffer)
        }
        // Nobody asked for more: stop the multishot receive (what it delivers meanwhile parks).
        if receiving && !readPending && !stopRequested && lifecycle.isOpen {
            stopRequested = true
            _ = try? loop.port.cancel(receiveContext)
        }
    }

    /// Fires `buffers` as reads and one read-complete; then `autoRead` asks for the next read.
    private func deliver(_ buffers: some Sequence<ByteBuffer>) {
        readPending = false
        let pipeline = channelPipeline.syncOperations
        for buffer in buffers {
            // A handler may close the channel or its input on any of them: no reads after that.
            guard lifecycle.isActive, !inputClosed else { break }
            pipeline.fireChannelRead(NIOAny(buffer))
        }
        guard lifecycle.isActive else { return }
        pipeline.fireChannelReadComplete()
        if autoRead && lifecycle.isActive { pipeline.read() }
    }

    /// Delivers what arrived while nobody asked for a read (a loop task after `read()`, so that
    /// a `read()` made inside `channelReadComplete` does not fire reads from within it).
    private func deliverParked() {
        deliveryScheduled = false
        guard lifecycle.isActive, readPending else { return }
        if !parked.isEmpty {
            let buffers = parked
            parked.removeAll()
            deliver(buffers)
        } else if parkedEnd {
            parkedEnd = false
            inputEnded()
            return
        }
        if readPending && !parked.isEmpty || parkedEnd {
            scheduleParkedDelivery()
        } else if readPending && !receiving && !inputClosed {
            postReceive()
        }
    }

    private func scheduleParkedDelivery() {
        guard !deliveryScheduled else { return }
        deliveryScheduled = true
        loop.execute { [self] in deliverParked() }
    }

    /// The peer's FIN: `inputClosed` with `allowRemoteHalfClosure`, else the channel closes.
    private func inputEnded() {
        inputClosed = true
        readPending = false
        if case .shut = output {
            // Both sides are closed now.
            close(error: ChannelError.eof, promise: nil)
        } else if allowRemoteHalfClosure {
            channelPipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        } else {
            close(error: ChannelError.eof, promise: nil)
        }
    }

    private func connected(_ completion: Completion) {
        connecting = false
        let promise = connectPromise
        connectPromise = nil
        guard lifecycle.isOpen else { return }
        if let error = completion.error {
            let failure = IOError(errnoCode: error.rawValue, reason: "connect")
            promise?.fail(failure)
            close(error: failure, promise: nil)
            return
        }
        cacheAddresses()
        // Active before the promise succeeds (its callbacks see an active channel), as NIOPosix.
        guard transition(.activate, promise: promise) else {
            promise?.fail(notNowError)
            return
        }
        startActiveWork()
    }

    /// ``sendFlushed(completing:)``, then completes the promises of the empty writes it passed,
    /// then shuts the write side down if that waited for the sends (`close(mode: .output)`).
    private func sendFlushedAndComplete() {
        var done: [EventLoopPromise<Void>] = []
        sendFlushed(completing: &done)
        for promise in done { promise.succeed(()) }
        shutDownOutputIfSent()
    }

    /// Sends what was flushed and is not in flight: one buffer from its own storage, several in
    /// one gathered send. The promises of the empty writes before it go to `done`, for the
    /// caller to complete after the send is posted: their callbacks may write and flush again,
    /// which must find this send in flight.
    private func sendFlushed(completing done: inout [EventLoopPromise<Void>]) {
        while flushedCount > 0, let first = writes.first, first.buffer.readableBytes == 0 {
            writes.removeFirst()
            flushedCount -= 1
            if let promise = first.promise { done.append(promise) }
        }
        guard flushedCount > 0 else { return }
        let count = min(flushedCount, SocketChannel.gatheredBuffers)
        do {
            if count == 1 {
                let bytes = writes[0].buffer.withUnsafeReadableBytes { $0 }
                try loop.port.write(handle, from: bytes, context: sendContext)
            } else {
                // The buffers' storage stays alive and unchanged in `writes` until the completion.
                gathered.removeAll(keepingCapacity: true)
                for index in 0..<count { gathered.append(writes[index].buffer.withUnsafeReadableBytes { $0 }) }
                try loop.port.write(handle, gathering: gathered, context: sendContext)
            }
            inFlightCount = count
        } catch {
            fail(NIOSocketCalls.ioError(error))
        }
    }

    private func sent(_ completion: Completion) {
        let carried = inFlightCount
        inFlightCount = 0
        guard lifecycle.isOpen else {
            failWrites(from: 0, error: ChannelError.ioOnClosedChannel)
            return
        }
        if let error = completion.error {
            let failure = IOError(errnoCode: error.rawValue, reason: "write")
            failWrites(from: 0, error: failure)
            fail(failure)
            return
        }
        var sent = completion.bytesTransferred
        // The promises complete once the queue is consistent (their callbacks may write again).
        var done = completedPromises
        completedPromises = []
        defer {
            done.removeAll(keepingCapacity: true)
            completedPromises = done
        }
        for _ in 0..<carried {
            let length = writes[0].buffer.readableBytes
            if sent >= length {
                sent -= length
                queuedBytes -= length
                if let promise = writes.removeFirst().promise { done.append(promise) }
                flushedCount -= 1
            } else {
                writes[0].buffer.moveReaderIndex(forwardBy: sent)
                queuedBytes -= sent
                break
            }
        }
        sendFlushed(completing: &done)
        updateWritability()
        for promise in done { promise.succeed(()) }
        shutDownOutputIfSent()
    }

    /// Shuts the write side down once `close(mode: .output)` waits and every flushed write was
    /// sent; then its promise succeeds and `outputClosed` fires (with the input closed already,
    /// the channel closes).
    private func shutDownOutputIfSent() {
        guard case .closing(let promise) = output, flushedCount == 0, inFlightCount == 0, lifecycle.isOpen else {
            return
        }
        output = .shut
        // Through the port, which checks the handle against a concurrent close. A peer that is
        // gone already (ENOTCONN) leaves nothing to shut.
        try? loop.port.shutdownWriting(handle)
        promise?.succeed(())
        channelPipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.outputClosed)
        if inputClosed && lifecycle.isOpen { close(error: ChannelError.outputClosed, promise: nil) }
    }

    // MARK: Writability, failures, close (on the loop)

    private func updateWritability() {
        let shouldBeWritable = writable ? queuedBytes <= waterMark.high : queuedBytes < waterMark.low
        guard shouldBeWritable != writable else { return }
        writable = shouldBeWritable
        writableFlag.store(writable, ordering: .relaxed)
        if lifecycle.isActive { channelPipeline.syncOperations.fireChannelWritabilityChanged() }
    }

    /// Fails the queued writes from index `start` on (those before it are in flight).
    private func failWrites(from start: Int, error: Error) {
        guard writes.count > start else { return }
        let failed = writes[start...]
        writes.removeLast(writes.count - start)
        flushedCount = min(flushedCount, start)
        for write in failed {
            queuedBytes -= write.buffer.readableBytes
            write.promise?.fail(error)
        }
    }

    /// An I/O error: fired as `errorCaught`, then the channel closes.
    private func fail(_ error: Error) {
        guard lifecycle.isOpen else { return }
        channelPipeline.syncOperations.fireErrorCaught(error)
        close(error: error, promise: nil)
    }

    /// Closes the channel: the socket's operations are cancelled (their completions come back,
    /// and only then the contexts are free), every write, a waiting `close(mode: .output)` and
    /// the connect fail with `error`, then the lifecycle's events fire.
    ///
    /// The state is settled before any user code runs (NIOPosix's order): a callback of a failed
    /// write or of the connect promise that closes again finds the channel closed. The writes in
    /// flight fail first, in order, before the close promise and `channelInactive`; their
    /// buffers stay until the send's completion.
    private func close(error: Error, promise: EventLoopPromise<Void>?) {
        guard let callouts = enter(.close) else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        loop.port.close(handle)
        readPending = false
        inputClosed = true
        var outputClosePromise: EventLoopPromise<Void>?
        if case .closing(let promise) = output { outputClosePromise = promise }
        output = .shut
        let connectPromise = self.connectPromise
        self.connectPromise = nil
        var inFlightPromises: [EventLoopPromise<Void>] = []
        for index in 0..<min(inFlightCount, writes.count) {
            if let promise = writes[index].promise.take() { inFlightPromises.append(promise) }
        }
        for promise in inFlightPromises { promise.fail(error) }
        failWrites(from: inFlightCount, error: error)
        outputClosePromise?.fail(error)
        connectPromise?.fail(error)
        fire(callouts, promise: promise)
        finishClose(core: self)
        releaseContextsIfIdle()
    }

    /// Once closed with nothing in flight, the contexts let go of the channel (which breaks the
    /// reference cycle).
    private func releaseContextsIfIdle() {
        guard !receiving, inFlightCount == 0, !connecting else { return }
        receiveContext.attachment = nil
        sendContext.attachment = nil
    }
}
