/// A pool of per-I/O contexts with buffers of one size, so that steady-state traffic reuses
/// contexts instead of allocating them.
///
/// Thread-safety: ``take()`` and ``recycle(_:)`` may be called from any thread.
public final class ContextPool: Sendable {
    /// The buffer size of every context of this pool.
    public let bufferSize: Int
    /// At most this many idle contexts are kept; more are freed on recycle.
    public let maximumIdle: Int
    private let idle: LockedValue<IdleContexts>

    /// The idle contexts, and the fewest there were since the last ``trimIdle()``.
    private struct IdleContexts {
        var contexts: [IOContext]
        var lowWater: Int
    }

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
        idle = LockedValue(IdleContexts(contexts: contexts, lowWater: contexts.count))
    }

    /// An idle context, or a new one when none is idle. The caller owns it.
    public func take() -> IOContext {
        let context = idle.withLock { idle -> IOContext? in
            let context = idle.contexts.popLast()
            if idle.contexts.count < idle.lowWater { idle.lowWater = idle.contexts.count }
            return context
        }
        return context ?? IOContext(capacity: bufferSize)
    }

    /// Gives a context back: it must not be in flight and must come from this pool (or have
    /// ``bufferSize`` bytes). Its bookkeeping fields are reset.
    public func recycle(_ context: consuming IOContext) {
        precondition(!context.isInFlight, "an in-flight IOContext cannot be recycled")
        precondition(context.capacity == bufferSize, "IOContext of another size recycled")
        context.userValue = 0
        context.attachment = nil
        context.count = 0
        context.offset = 0
        // The caller's reference moves into the idle list (no retain); beyond the limit it is
        // dropped here, outside the lock.
        var kept: IOContext? = consume context
        idle.withLock { idle in
            if idle.contexts.count < maximumIdle, let context = kept.take() {
                idle.contexts.append(consume context)
            }
        }
    }

    /// Frees the contexts that stayed idle since the previous call (the fewest idle at any
    /// moment in between were never needed) and returns how many. Called periodically (a
    /// server's sweep), this keeps what steady traffic uses and gives back what a burst left.
    @discardableResult
    public func trimIdle() -> Int {
        let freed = idle.withLock { idle -> [IOContext] in
            let excess = idle.lowWater
            let freed = Array(idle.contexts.prefix(excess))
            idle.contexts.removeFirst(excess)
            idle.lowWater = idle.contexts.count
            return freed
        }
        // The contexts are released here, outside the lock.
        return freed.count
    }

    /// The number of idle contexts.
    public var idleCount: Int {
        idle.withLock { $0.contexts.count }
    }
}
