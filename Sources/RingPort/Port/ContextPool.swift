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

    /// Moves up to `count` idle contexts into the uninitialized memory at `storage` under one
    /// pass through the lock, or one new context when none is idle; returns how many. The
    /// caller owns them.
    func take(_ count: Int, into storage: UnsafeMutablePointer<IOContext>) -> Int {
        var taken = 0
        idle.withLock { idle in
            // Moved one at a time: no reference counting.
            while taken < count, let context = idle.contexts.popLast() {
                (storage + taken).initialize(to: consume context)
                taken += 1
            }
            if idle.contexts.count < idle.lowWater { idle.lowWater = idle.contexts.count }
        }
        if taken == 0 {
            storage.initialize(to: IOContext(capacity: bufferSize))
            taken = 1
        }
        return taken
    }

    /// Moves the `count` contexts at `storage` back into the idle list under one pass through
    /// the lock, leaving the memory uninitialized (those beyond ``maximumIdle`` are freed,
    /// outside it). They were reset by ``resetForReuse(_:)``.
    func recycle(moving storage: UnsafeMutablePointer<IOContext>, count: Int) {
        let kept = idle.withLock { idle in
            let kept = min(count, max(0, maximumIdle - idle.contexts.count))
            for index in 0..<kept {
                idle.contexts.append((storage + index).move())
            }
            return kept
        }
        (storage + kept).deinitialize(count: count - kept)
    }

    /// Gives a context back: it must not be in flight and must come from this pool (or have
    /// ``bufferSize`` bytes). Its bookkeeping fields are reset.
    public func recycle(_ context: consuming IOContext) {
        resetForReuse(context)
        // The caller's reference moves into the idle list (no retain); beyond the limit it is
        // dropped here, outside the lock.
        var kept: IOContext? = consume context
        idle.withLock { idle in
            if idle.contexts.count < maximumIdle, let context = kept.take() {
                idle.contexts.append(consume context)
            }
        }
    }

    /// Checks that `context` may be reused as one of this pool's and resets its bookkeeping
    /// fields (what ``recycle(_:)`` and ``ContextCache/recycle(_:to:)`` do before keeping it).
    func resetForReuse(_ context: borrowing IOContext) {
        precondition(!context.isInFlight, "an in-flight IOContext cannot be recycled")
        precondition(context.capacity == bufferSize, "IOContext of another size recycled")
        context.userValue = 0
        context.attachment = nil
        context.count = 0
        context.offset = 0
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

/// A few idle contexts of a ``ContextPool`` kept by one thread, so that threads that take and
/// recycle contexts (workers posting sends and handling their completions, not necessarily the
/// same thread for both) pass through the pool's lock once per batch instead of once per context.
///
/// An empty cache takes half its ``limit`` from the pool at once; a full one gives half back.
/// Thread-confined: one thread owns it (in a thread-specific slot, say) and never shares it,
/// hence not `Sendable`; noncopyable, since it owns the storage of its contexts. The pool's
/// ``ContextPool/trimIdle()`` does not see the cache's contexts: they are freed with it.
public struct ContextCache: ~Copyable {
    /// The most idle contexts the cache keeps.
    public let limit: Int
    /// The idle contexts, `count` of them, in storage of their own: taking and recycling move a
    /// reference in or out, without an array's uniqueness checks and calls into the standard
    /// library.
    private let idle: UnsafeMutablePointer<IOContext>
    private var idleCount = 0

    /// An empty cache that keeps at most `limit` contexts (at least 2).
    public init(limit: Int = 16) {
        precondition(limit >= 2, "a cache moves half its limit at a time")
        self.limit = limit
        idle = .allocate(capacity: limit)
    }

    deinit {
        idle.deinitialize(count: idleCount)
        idle.deallocate()
    }

    /// A context of `pool`'s: one the cache kept, else one of a batch taken from the pool. The
    /// caller owns it.
    public mutating func take(from pool: ContextPool) -> IOContext {
        if idleCount == 0 { idleCount = pool.take(limit / 2, into: idle) }
        idleCount -= 1
        return (idle + idleCount).move()
    }

    /// Gives a context of `pool`'s back: it must not be in flight; its bookkeeping fields are
    /// reset. A full cache first gives half of what it keeps back to the pool.
    public mutating func recycle(_ context: consuming IOContext, to pool: ContextPool) {
        pool.resetForReuse(context)
        if idleCount >= limit {
            let kept = limit / 2
            pool.recycle(moving: idle + kept, count: idleCount - kept)
            idleCount = kept
        }
        (idle + idleCount).initialize(to: context)
        idleCount += 1
    }

    /// The number of contexts the cache keeps now.
    public var count: Int { idleCount }
}
