import struct NIOCore.ByteBuffer
import struct NIOCore.ByteBufferAllocator

/// The byte buffers one worker thread recycles: those whose sends completed come back here,
/// and received bytes are copied into them, so that an echoing connection allocates nothing per
/// message once the cache is warm.
///
/// Thread-confined: it lives in the thread's ``WorkerJobs`` and is used only by the thread's
/// completion handlers. A recycled buffer the application still shares (it kept a copy of what
/// it wrote) is still correct to reuse: clearing it copies on write, at the cost of an
/// allocation.
///
/// A thread whose cache is full hands ``exchangeCount`` of its buffers to the port's
/// ``ByteBufferDepot``, and one whose cache is empty takes as many from there: the receives
/// and the sends of a connection often complete on different threads.
///
/// Memory: at most ``maximumCount`` buffers of at most ``maximumCapacity`` bytes each, per
/// worker thread (512 KiB); bigger buffers are freed when they come back.
struct ByteBufferCache {
    static let maximumCount = 32
    static let maximumCapacity = 16384
    /// Buffers moved to or from the depot at once.
    static let exchangeCount = 16

    private var buffers: [ByteBuffer] = []
    /// The port's depot (set by the port when the thread handles its first completion: a worker
    /// thread serves one port).
    var depot: ByteBufferDepot?
    private static let allocator = ByteBufferAllocator()

    init(depot: ByteBufferDepot? = nil) {
        self.depot = depot
    }

    /// An empty buffer with room for at least `capacity` bytes: a recycled one when there is
    /// one here or in `depot`, a new one otherwise.
    mutating func take(capacity: Int) -> ByteBuffer {
        if buffers.isEmpty, let depot { depot.withdraw(upTo: Self.exchangeCount, into: &buffers) }
        guard var buffer = buffers.popLast() else {
            return Self.allocator.buffer(capacity: capacity)
        }
        if buffer.capacity >= capacity {
            // Emptied by its indices alone: `clear(minimumCapacity:)` reads the storage's
            // capacity, a class property, which costs a dynamic exclusivity check (and a
            // thread-local lookup) per call. A buffer the application still shares is copied
            // on its first write, as `clear` would have done.
            buffer.moveReaderIndex(to: 0)
            buffer.moveWriterIndex(to: 0)
        } else {
            buffer.clear(minimumCapacity: capacity)
        }
        return buffer
    }

    /// Keeps `buffer` for a later ``take(capacity:)`` unless its storage is too big to keep (a
    /// slice of a large buffer would keep all of it); a full cache first hands part of itself to
    /// the depot (without one, the buffer is dropped).
    mutating func recycle(_ buffer: consuming ByteBuffer) {
        guard buffer.storageCapacity <= Self.maximumCapacity else { return }
        if buffers.count == Self.maximumCount {
            guard let depot else { return }
            depot.deposit(lastOf: &buffers, count: Self.exchangeCount)
        }
        if buffers.capacity == 0 { buffers.reserveCapacity(Self.maximumCount) }
        buffers.append(consume buffer)
    }
}
