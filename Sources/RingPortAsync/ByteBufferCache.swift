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
/// Memory: at most ``maximumCount`` buffers of at most ``maximumCapacity`` bytes each, per
/// worker thread (512 KiB); bigger buffers are freed when they come back.
struct ByteBufferCache {
    static let maximumCount = 32
    static let maximumCapacity = 16384

    private var buffers: [ByteBuffer] = []
    private static let allocator = ByteBufferAllocator()

    /// An empty buffer with room for at least `capacity` bytes: a recycled one when there is
    /// one, a new one otherwise.
    mutating func take(capacity: Int) -> ByteBuffer {
        guard var buffer = buffers.popLast() else {
            return Self.allocator.buffer(capacity: capacity)
        }
        buffer.clear(minimumCapacity: capacity)
        return buffer
    }

    /// Keeps `buffer` for a later ``take(capacity:)``, unless the cache is full or the buffer
    /// is too big to keep.
    mutating func recycle(_ buffer: consuming ByteBuffer) {
        guard buffers.count < Self.maximumCount, buffer.capacity <= Self.maximumCapacity else { return }
        if buffers.capacity == 0 { buffers.reserveCapacity(Self.maximumCount) }
        buffers.append(buffer)
    }
}
