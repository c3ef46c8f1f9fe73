import Synchronization

/// A pool of per-I/O contexts with buffers of one size, so that steady-state traffic reuses
/// contexts instead of allocating them.
///
/// Thread-safety: ``take()`` and ``recycle(_:)`` may be called from any thread.
public final class ContextPool: Sendable {
    /// The buffer size of every context of this pool.
    public let bufferSize: Int
    /// At most this many idle contexts are kept; more are freed on recycle.
    public let maximumIdle: Int
    private let idle: LockedValue<[IOContext]>
    private let discarded = Atomic<Int>(0)

    /// Creates a pool of contexts with `bufferSize`-byte buffers, keeping at most `maximumIdle`
    /// idle ones. `preallocate` contexts are created at once.
    public init(bufferSize: Int, maximumIdle: Int = 4096, preallocate: Int = 0) {
        precondition(bufferSize >= 0 && maximumIdle >= 0 && preallocate >= 0)
        self.bufferSize = bufferSize
        self.maximumIdle = maximumIdle
        var contexts: [IOContext] = []
        contexts.reserveCapacity(max(preallocate, min(maximumIdle, 1024)))
        for _ in 0..<preallocate {
            contexts.append(IOContext(capacity: bufferSize))
        }
        idle = LockedValue(contexts)
    }

    /// An idle context, or a new one when none is idle. The caller owns it.
    public func take() -> IOContext {
        if let context = idle.withLock({ $0.popLast() }) {
            return context
        }
        return IOContext(capacity: bufferSize)
    }

    /// Gives a context back: it must not be in flight and must come from this pool (or have
    /// ``bufferSize`` bytes). Its bookkeeping fields are reset.
    public func recycle(_ context: IOContext) {
        precondition(!context.isInFlight, "an in-flight IOContext cannot be recycled")
        precondition(context.capacity == bufferSize, "IOContext of another size recycled")
        context.userValue = 0
        context.attachment = nil
        context.count = 0
        context.offset = 0
        let kept = idle.withLock { contexts -> Bool in
            guard contexts.count < maximumIdle else { return false }
            contexts.append(context)
            return true
        }
        if !kept { discarded.add(1, ordering: .relaxed) }
    }

    /// How many recycled contexts were freed because ``maximumIdle`` were already idle. A server
    /// can watch it to return freed memory to the system after a burst (`malloc_trim`).
    public var discardedCount: Int {
        discarded.load(ordering: .relaxed)
    }

    /// The number of idle contexts.
    public var idleCount: Int {
        idle.withLock { $0.count }
    }
}
