import CLiburing
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

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
    // against the default build; docs/ARCHITECTURE.md).

    /// The buffer's size in bytes.
    public let capacity: Int

    /// The tag of the operation last posted with this context.
    @exclusivity(unchecked) public internal(set) var operation: IOOperation = .nop

    /// A value of the application's choosing, carried unchanged through the operation.
    @exclusivity(unchecked) public var userValue: UInt64 = 0

    /// An object of the application's choosing, carried unchanged through the operation.
    @exclusivity(unchecked) public var attachment: AnyObject?

    /// Bookkeeping for the application: e.g. how many bytes of the buffer are valid, or how far a
    /// write has progressed. RingPort never reads these.
    @exclusivity(unchecked) public var count: Int = 0
    /// See ``count``.
    @exclusivity(unchecked) public var offset: Int = 0

    /// The buffer. Allocated once, freed in `deinit`; a context of capacity 0 (bookkeeping only,
    /// e.g. for receives into provided buffers) allocates none and points nowhere.
    let bytes: UnsafeMutableRawPointer
    /// Memory the kernel reads or writes besides the buffer (peer addresses, timespecs),
    /// allocated the first time an accept, connect or timeout needs it, while the application
    /// still owns the context; freed in `deinit`. Most contexts never need it.
    @exclusivity(unchecked) private var scratchStorage: UnsafeMutablePointer<Scratch>?

    /// Who owns the context: ``applicationOwned``, ``completedOwned`` (reaped, waiting to be
    /// dequeued), or `kernelOwnedBase + shard` (the kernel holds it on that shard's ring).
    private let state = Atomic<Int>(IOContext.applicationOwned)
    static let applicationOwned = 0
    static let completedOwned = 1
    static let kernelOwnedBase = 2

    // In-flight bookkeeping, guarded by the owning shard's lock while the kernel owns the context.
    @exclusivity(unchecked) var userData: UInt64 = 0
    @exclusivity(unchecked) var indexInHandle: Int = -1

    /// Creates a context with a buffer of `capacity` bytes.
    ///
    /// Prefer ``ContextPool/take()`` in servers: it reuses contexts.
    public init(capacity: Int) {
        precondition(capacity >= 0, "capacity must not be negative")
        self.capacity = capacity
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
        if let scratchStorage {
            scratchStorage.deinitialize(count: 1)
            scratchStorage.deallocate()
        }
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

    // MARK: Port-side transitions

    /// Hands the context to the kernel through `shard`'s ring. Returns false when the port
    /// already owned it.
    func beginFlight(onShard shard: Int) -> Bool {
        state.compareExchange(
            expected: IOContext.applicationOwned, desired: IOContext.kernelOwnedBase + shard,
            ordering: .acquiringAndReleasing
        ).exchanged
    }

    /// The shard whose kernel ring owns the context, or nil when the kernel does not own it.
    var kernelShard: Int? {
        let value = state.load(ordering: .acquiring)
        return value >= IOContext.kernelOwnedBase ? value - IOContext.kernelOwnedBase : nil
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
        var timeout = __kernel_timespec()
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

    /// The scratch socket address, at a stable address for the kernel.
    var scratchAddress: UnsafeMutablePointer<sockaddr_storage> { scratch.pointer(to: \.address)! }
    /// The scratch socket address length, at a stable address for the kernel.
    var scratchAddressLength: UnsafeMutablePointer<socklen_t> { scratch.pointer(to: \.addressLength)! }
    /// The scratch timespec, at a stable address for the kernel.
    var scratchTimeout: UnsafeMutablePointer<__kernel_timespec> { scratch.pointer(to: \.timeout)! }
}
