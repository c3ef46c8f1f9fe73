import CLiburing
import Glibc
import Synchronization

/// A per-I/O context: the buffer and the bookkeeping of one asynchronous operation, like the
/// `PER_IO_DATA` (an `OVERLAPPED` plus a buffer and an operation tag) of a completion-port server.
///
/// ## Ownership
/// A context has one owner at a time:
/// - the application, from creation (or from being dequeued) until it posts an operation with it;
/// - the completion port, from that post until the operation's completion is *dequeued*.
///   The port holds a strong reference meanwhile, so the buffer stays allocated and valid for the
///   kernel even when the application drops its own references or cancels the operation.
///
/// While the port owns it, the buffer must not be read or written: the accessors trap
/// (``isInFlight`` tells). A context may carry one operation at a time; posting it again while
/// in flight throws ``RingPortError/Code/contextInFlight``.
///
/// Contexts are meant to be reused: post the next read with the same context, or give it back
/// to a ``ContextPool``. Steady-state traffic then allocates nothing.
///
/// ## Thread-safety
/// Hand a context between threads only together with its ownership (posting it, dequeuing it,
/// returning it to a pool). Its mutable properties are not synchronised.
public final class IOContext: @unchecked Sendable {
    // @unchecked: ownership moves between threads only through the port's lock (post,
    // reap, dequeue) or a pool's lock, which order every access; `state` is atomic so that a
    // misuse (touching the buffer while the kernel owns it) is caught instead of racing.
    //
    // Stored properties marked @exclusivity(unchecked) skip Swift's dynamic exclusivity checks:
    // every access is already serialised as described, and on the echo benchmark the checks
    // cost 12–14% of the server's CPU per message (measured with -enforce-exclusivity=unchecked
    // against the default build; docs/ARCHITECTURE.md). The attribute holds only for accesses
    // compiled in this module: another module's direct access to a public stored property is
    // checked again (a `swift_beginAccess` per access, counted with a uprobe in the async layer).
    // So the public ones are inlinable accessors over `stored…` properties, whose bodies are
    // compiled here.

    // The stored properties are declared in an order that packs the small ones two to a word
    // (capacity and state, operation and indexInHandle): a context is 88 bytes, and every
    // connection holds one or two.

    /// The buffer's size in bytes.
    public var capacity: Int { Int(storedCapacity) }
    /// One operation moves at most `UInt32.max` bytes (an SQE's length), so no buffer is larger.
    private let storedCapacity: UInt32

    /// Who owns the context: ``applicationOwned``, ``completedOwned`` (reaped, waiting to be
    /// dequeued), or `kernelOwnedBase + ring` (the kernel holds it on that ring).
    private let state = Atomic<UInt32>(IOContext.applicationOwned)
    static let applicationOwned: UInt32 = 0
    static let completedOwned: UInt32 = 1
    static let kernelOwnedBase: UInt32 = 2

    /// The tag of the operation last posted with this context.
    @inlinable public internal(set) var operation: IOOperation {
        get { storedOperation }
        set { storedOperation = newValue }
    }
    @usableFromInline @exclusivity(unchecked) var storedOperation: IOOperation = .nop
    /// The context's position in its handle's ``InflightContexts`` while the kernel owns it
    /// (guarded by the owning ring's lock), else -1.
    @exclusivity(unchecked) var indexInHandle: Int32 = -1

    /// A value of the application's choosing, carried unchanged through the operation.
    @inlinable public var userValue: UInt64 {
        get { storedUserValue }
        set { storedUserValue = newValue }
    }
    @usableFromInline @exclusivity(unchecked) var storedUserValue: UInt64 = 0

    /// An object of the application's choosing, carried unchanged through the operation.
    @inlinable public var attachment: AnyObject? {
        get { storedAttachment }
        _modify { yield &storedAttachment }
    }
    @usableFromInline @exclusivity(unchecked) var storedAttachment: AnyObject?

    /// Bookkeeping for the application: e.g. how many bytes of the buffer are valid, or how far a
    /// write has progressed. RingPort never reads these.
    @inlinable public var count: Int {
        get { storedCount }
        set { storedCount = newValue }
    }
    @usableFromInline @exclusivity(unchecked) var storedCount = 0
    /// See ``count``.
    @inlinable public var offset: Int {
        get { storedOffset }
        set { storedOffset = newValue }
    }
    @usableFromInline @exclusivity(unchecked) var storedOffset = 0

    /// The buffer. Allocated once, freed in `deinit`; a context of capacity 0 (bookkeeping only,
    /// e.g. for receives into provided buffers) allocates none and points nowhere.
    let bytes: UnsafeMutableRawPointer

    /// The buffer's memory, for the package's layers that fill it while they own the context
    /// (a server's write chunks): no in-flight check, no exclusivity check across modules.
    package var unsafeBytes: UnsafeMutableRawPointer { bytes }
    /// Memory the kernel reads or writes besides the buffer (peer addresses, timespecs),
    /// allocated the first time an accept, connect or timeout needs it, while the application
    /// still owns the context; freed in `deinit`. Most contexts never need it. The first
    /// datagram operation replaces it with a larger ``MessageScratch`` whose first field is this
    /// ``Scratch`` (``Scratch/isMessageScratch`` tells), so contexts that never send or receive
    /// datagrams never pay for a message header.
    @exclusivity(unchecked) private var scratchStorage: UnsafeMutablePointer<Scratch>?

    // In-flight bookkeeping, guarded by the owning ring's lock while the kernel owns the context.
    @exclusivity(unchecked) var userData: UInt64 = 0

    /// Creates a context with a buffer of `capacity` bytes.
    ///
    /// Prefer ``ContextPool/take()`` in servers: it reuses contexts.
    public init(capacity: Int) {
        precondition(capacity >= 0, "capacity must not be negative")
        precondition(capacity <= UInt32.max, "capacity must not exceed UInt32.max (one operation's limit)")
        storedCapacity = UInt32(capacity)
        if capacity > 0 {
            bytes = .allocate(byteCount: capacity, alignment: 64)
        } else {
            // Never dereferenced: every access is bounded by a count of 0.
            bytes = UnsafeMutableRawPointer(bitPattern: 64)!
        }
    }

    deinit {
        // The port holds a strong reference while the kernel may touch this memory, so it
        // cannot be in flight here.
        assert(!isInFlight, "an in-flight context was deallocated")
        freeScratch()
        if capacity > 0 { bytes.deallocate() }
    }

    /// Whether the completion port owns this context (an operation was posted and its
    /// completion has not been dequeued yet).
    public var isInFlight: Bool {
        state.load(ordering: .acquiring) != IOContext.applicationOwned
    }

    /// Calls `body` with the buffer. Traps when the context is in flight.
    public func withUnsafeMutableBytes<Result, Failure: Error>(
        _ body: (UnsafeMutableRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        precondition(!isInFlight, "the buffer of an in-flight IOContext belongs to the kernel")
        return try body(UnsafeMutableRawBufferPointer(start: bytes, count: capacity))
    }

    /// Calls `body` with the buffer, read-only. Traps when the context is in flight.
    public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        precondition(!isInFlight, "the buffer of an in-flight IOContext belongs to the kernel")
        return try body(UnsafeRawBufferPointer(start: bytes, count: capacity))
    }

    /// Copies `source` into the buffer at `offset` and returns the number of bytes copied.
    /// Traps when the context is in flight or the bytes do not fit.
    @discardableResult
    public func copyBytes<Bytes: Collection<UInt8>>(from source: Bytes, at offset: Int = 0) -> Int {
        withUnsafeMutableBytes { buffer in
            precondition(offset >= 0 && offset + source.count <= buffer.count, "bytes do not fit the buffer")
            UnsafeMutableRawBufferPointer(rebasing: buffer[offset...]).copyBytes(from: source)
            return source.count
        }
    }

    /// The bytes in `range` as an array. Traps when the context is in flight.
    public func bytes(in range: Range<Int>) -> [UInt8] {
        withUnsafeBytes { Array($0[range]) }
    }

    /// The peer address an accept completed with, or nil when the last operation was no accept
    /// or it failed. Traps when the context is in flight.
    public var acceptedPeerAddress: SocketAddress? {
        precondition(!isInFlight, "an in-flight IOContext belongs to the kernel")
        guard operation == .accept, let scratch = scratchStorage, scratch.pointee.addressLength > 0 else { return nil }
        return SocketAddress(storage: scratch.pointee.address, length: scratch.pointee.addressLength)
    }

    /// The address the datagram came from, after a
    /// ``CompletionPort/receiveMessage(_:into:range:)`` that succeeded (the `msg_name` the
    /// kernel filled in). Nil when the last operation was no message receive, when it failed or
    /// was cancelled, or when the sender is not an IPv4 or IPv6 address (e.g. a Unix socket).
    ///
    /// Read it once the completion is dequeued, while the application owns the context (before
    /// posting it again): it traps when the context is in flight, and the next operation
    /// overwrites it.
    public var messageSenderAddress: SocketAddress? {
        precondition(!isInFlight, "an in-flight IOContext belongs to the kernel")
        guard operation == .receiveMessage, let message = receivedMessageScratch else { return nil }
        return SocketAddress(storage: message.pointee.base.address, length: message.pointee.header.msg_namelen)
    }

    /// Whether the datagram a ``CompletionPort/receiveMessage(_:into:range:)`` delivered was
    /// longer than the range it was received into (`MSG_TRUNC` in `msg_flags`): the completion's
    /// ``Completion/bytesTransferred`` bytes arrived and the rest of the datagram is lost. False
    /// when the last operation was no message receive or it failed.
    ///
    /// Same ownership rule as ``messageSenderAddress``: traps while the context is in flight.
    public var isMessageTruncated: Bool {
        precondition(!isInFlight, "an in-flight IOContext belongs to the kernel")
        guard operation == .receiveMessage, let message = receivedMessageScratch else { return false }
        return message.pointee.header.msg_flags & Int32(MSG_TRUNC) != 0
    }

    /// The message scratch a receive filled in, if the context has one (it always does after a
    /// message receive was posted).
    private var receivedMessageScratch: UnsafeMutablePointer<MessageScratch>? {
        guard let scratchStorage, scratchStorage.pointee.isMessageScratch else { return nil }
        return UnsafeMutableRawPointer(scratchStorage).assumingMemoryBound(to: MessageScratch.self)
    }

    // MARK: Port-side transitions

    /// Hands the context to the kernel through ring `ring`. Returns false when the port
    /// already owned it.
    func beginFlight(onRing ring: Int) -> Bool {
        state.compareExchange(
            expected: IOContext.applicationOwned, desired: IOContext.kernelOwnedBase + UInt32(ring),
            ordering: .acquiringAndReleasing
        ).exchanged
    }

    /// The ring whose io_uring instance owns the context, or nil when the kernel does not own it.
    var kernelRing: Int? {
        let value = state.load(ordering: .acquiring)
        return value >= IOContext.kernelOwnedBase ? Int(value - IOContext.kernelOwnedBase) : nil
    }

    /// The kernel is done with the context; it waits in the port's ready queue.
    func endKernelFlight() {
        state.store(IOContext.completedOwned, ordering: .releasing)
    }

    /// Gives the context back to the application.
    func endFlight() {
        state.store(IOContext.applicationOwned, ordering: .releasing)
    }
}

extension IOContext {
    /// Memory the kernel reads or writes during an operation besides the buffer. It must stay
    /// valid until the operation completes, so it lives with the context.
    struct Scratch {
        var address = sockaddr_storage()
        var addressLength = socklen_t(0)
        /// Whether this is the `base` of a ``MessageScratch``. Sits in what would otherwise be
        /// padding after `addressLength`, so the plain scratch does not grow.
        var isMessageScratch = false
        var timeout = __kernel_timespec()
    }

    /// The scratch memory of a datagram operation (`RECVMSG` / `SENDMSG`): the message header
    /// and the one-entry I/O vector the kernel reads, besides the plain scratch whose `address`
    /// holds the peer's address (read for a send, written by a receive). The header points into
    /// this same allocation and into the context's buffer, both of which the context keeps alive
    /// until the completion.
    struct MessageScratch {
        /// First, so that a pointer to it is a pointer to the whole (see ``messageScratch``).
        var base: Scratch
        var header = msghdr()
        var vector = iovec()
    }

    /// The scratch memory, allocated on first use. Call it only while the application owns
    /// the context (before posting the operation that needs it).
    private var scratch: UnsafeMutablePointer<Scratch> {
        if let scratchStorage { return scratchStorage }
        let storage = UnsafeMutablePointer<Scratch>.allocate(capacity: 1)
        storage.initialize(to: Scratch())
        scratchStorage = storage
        return storage
    }

    /// The scratch memory of a datagram operation: the ``MessageScratch`` that extends
    /// ``Scratch``, allocated (or grown from a plain ``Scratch``, keeping its contents) on first
    /// use. Call it only while the caller owns the context *and* no operation can be using the
    /// old scratch: inside a post's `prepare` closure, after the port took the context over.
    var messageScratch: UnsafeMutablePointer<MessageScratch> {
        if let scratchStorage, scratchStorage.pointee.isMessageScratch {
            // Allocated below as a MessageScratch, whose first field (offset 0) is this Scratch.
            return UnsafeMutableRawPointer(scratchStorage).assumingMemoryBound(to: MessageScratch.self)
        }
        precondition(MemoryLayout<MessageScratch>.offset(of: \.base) == 0, "MessageScratch must start with its Scratch")
        var base = scratchStorage?.pointee ?? Scratch()
        base.isMessageScratch = true
        let storage = UnsafeMutablePointer<MessageScratch>.allocate(capacity: 1)
        storage.initialize(to: MessageScratch(base: base))
        freeScratch()
        scratchStorage = storage.pointer(to: \.base)!
        return storage
    }

    /// Frees the scratch memory, whichever of the two sizes it has.
    private func freeScratch() {
        guard let scratchStorage else { return }
        if scratchStorage.pointee.isMessageScratch {
            let message = UnsafeMutableRawPointer(scratchStorage).assumingMemoryBound(to: MessageScratch.self)
            message.deinitialize(count: 1)
            message.deallocate()
        } else {
            scratchStorage.deinitialize(count: 1)
            scratchStorage.deallocate()
        }
        self.scratchStorage = nil
    }

    /// How many bytes of scratch memory the context holds: 0, a ``Scratch`` or a
    /// ``MessageScratch`` (for tests of what an idle context costs).
    var scratchByteCount: Int {
        guard let scratchStorage else { return 0 }
        return scratchStorage.pointee.isMessageScratch
            ? MemoryLayout<MessageScratch>.size : MemoryLayout<Scratch>.size
    }

    /// The scratch socket address, at a stable address for the kernel.
    var scratchAddress: UnsafeMutablePointer<sockaddr_storage> { scratch.pointer(to: \.address)! }
    /// The scratch socket address length, at a stable address for the kernel.
    var scratchAddressLength: UnsafeMutablePointer<socklen_t> { scratch.pointer(to: \.addressLength)! }
    /// The scratch timespec, at a stable address for the kernel.
    var scratchTimeout: UnsafeMutablePointer<__kernel_timespec> { scratch.pointer(to: \.timeout)! }
}
