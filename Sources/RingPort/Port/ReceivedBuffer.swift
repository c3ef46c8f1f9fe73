/// A provided buffer the kernel filled for a multishot receive (``CompletionPort/receiveMultishot(_:context:limit:)``).
///
/// The application owns the buffer from the moment it dequeues the completion until it calls
/// ``release()``, which gives it back to the ring's pool for the kernel to fill again. Keep it as
/// long as its bytes are needed (e.g. until a write of them completes) and release it exactly
/// once; releasing twice traps (released on a pool worker, when the worker gives its buffers
/// back; from two threads, not reliably). Until released, the buffer is unavailable to every connection of
/// its ring, so hold buffers briefly.
///
/// Thread-safety: a value type that may be passed between threads with its ownership;
/// ``release()`` may be called from any thread (it takes the ring's lock; on a ``WorkerPool``'s
/// thread, the worker gives the buffer back with its next pass through that lock instead).
public struct ReceivedBuffer: Sendable {
    /// The ring the buffer belongs to, not retained: a ring keeps itself alive while any of its
    /// buffers is held by the application (`Ring.handOutBufferLocked(_:)`), so the value carries
    /// no reference count and copying a completion that holds one costs nothing more.
    let ring: Unmanaged<Ring>
    /// The buffer's ID in its ring.
    public let id: UInt16
    /// The number of bytes received into it.
    public let count: Int

    /// Calls `body` with the received bytes. Do not use the pointer after ``release()``.
    public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        let bytes = ring._withUnsafeGuaranteedRef { $0.bufferRingBytes(of: id, count: count) }
        return try body(bytes)
    }

    /// The received bytes, copied into an array.
    public var bytes: [UInt8] {
        withUnsafeBytes { Array($0) }
    }

    /// Gives the buffer back to the kernel. Call once.
    ///
    /// Called from a handler on a ``WorkerPool``'s worker for a buffer of the worker's ring, the
    /// buffer goes back when the worker next takes the ring's lock: when the handler returns
    /// and the worker dequeues again, before it next waits in the kernel (one pass through the
    /// lock for every buffer released meanwhile, and none per buffer). Elsewhere, at once.
    public func release() {
        ring._withUnsafeGuaranteedRef { $0.recycleBuffer(id) }
    }

    /// Gives the buffer back to the kernel at once, also on a pool worker: for a caller that
    /// wakes a receive waiting for a buffer right after (the server's connections that found
    /// their ring out of buffers).
    package func releaseNow() {
        ring._withUnsafeGuaranteedRef { $0.recycleBufferNow(id) }
    }
}
