import RingPort

import struct NIOCore.ByteBuffer

/// Byte buffers on their way between the worker threads' ``ByteBufferCache``s.
///
/// A connection's receive and its send may complete on different workers, and on a busy port
/// they systematically do: some workers mostly recycle the buffers of finished sends, others
/// mostly take buffers for arrivals (measured at 64 echoing connections: 38% of the takes found
/// their thread's cache empty while other threads dropped as many buffers on full caches, an
/// allocation and a free per miss). A cache that fills up hands half of itself here, one that
/// runs empty takes up to that many back, so the lock is taken once per
/// ``ByteBufferCache/exchangeCount`` buffers.
///
/// Memory: at most ``maximumCount`` buffers (each at most ``ByteBufferCache/maximumCapacity``
/// bytes); ``trimIdle()`` frees those a burst left behind.
///
/// Thread-safety: every member may be called from any thread (one lock).
final class ByteBufferDepot: Sendable {
    /// The most buffers kept; a deposit beyond this frees the rest.
    static let maximumCount = 512

    private let idle = LockedValue(IdleBuffers())

    /// The buffers, and the fewest there were since the last ``trimIdle()``.
    private struct IdleBuffers {
        var buffers: [ByteBuffer] = []
        var lowWater = 0
    }

    /// Moves up to `count` buffers from the depot to the end of `cache`.
    ///
    /// One at a time, by moving each out of one array into the other: copying a slice and then
    /// removing it would retain and release every buffer's storage, on cache lines that other
    /// threads wrote last (measured: 2.5 reference counts per echoed message at 64 connections).
    func withdraw(upTo count: Int, into cache: inout [ByteBuffer]) {
        idle.withLock { idle in
            let moved = min(count, idle.buffers.count)
            guard moved > 0 else { return }
            for _ in 0..<moved { cache.append(idle.buffers.removeLast()) }
            idle.lowWater = min(idle.lowWater, idle.buffers.count)
        }
    }

    /// Moves the last `count` buffers of `cache` into the depot, one at a time (see
    /// ``withdraw(upTo:into:)``); those beyond ``maximumCount`` are freed, outside the lock.
    func deposit(lastOf cache: inout [ByteBuffer], count: Int) {
        let kept = idle.withLock { idle in
            if idle.buffers.capacity == 0 { idle.buffers.reserveCapacity(Self.maximumCount) }
            let kept = min(count, Self.maximumCount - idle.buffers.count)
            for _ in 0..<kept { idle.buffers.append(cache.removeLast()) }
            return kept
        }
        cache.removeLast(count - kept)
    }

    /// Frees the buffers that stayed in the depot since the previous call (the fewest there
    /// were at any moment in between were never needed) and returns how many; called by the
    /// port's ``IdleMemorySweep``.
    @discardableResult
    func trimIdle() -> Int {
        let freed = idle.withLock { idle -> [ByteBuffer] in
            let freed = Array(idle.buffers.prefix(idle.lowWater))
            idle.buffers.removeFirst(idle.lowWater)
            if idle.buffers.isEmpty { idle.buffers = [] }
            idle.lowWater = idle.buffers.count
            return freed
        }
        // The buffers are freed here, outside the lock.
        return freed.count
    }

    /// The number of buffers in the depot.
    var count: Int {
        idle.withLock { $0.buffers.count }
    }
}
