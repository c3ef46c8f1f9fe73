import Glibc
import RingPort

/// One worker thread's few idle write chunks: a ``ContextCache`` of the server's chunk pool, so
/// that copying a write into a new chunk and recycling a sent one pass through the pool's lock
/// once per batch instead of each time (two lock round trips per echoed message before).
///
/// Thread-confined: created for a worker thread of the server's pool on its first use (never for
/// another thread: see `WorkerPool.callingThreadServes(_:)`), reached only through that thread's
/// thread-specific slot, and freed by the slot's destructor when the thread exits, with the
/// chunks it keeps. At most ``limit`` chunks per worker stay outside the pool, where its idle
/// trim does not see them. Not `Sendable`, and never handed to another thread.
final class WorkerWriteChunks {
    /// The most chunks a worker keeps: batches of 4 with the pool.
    static let limit = 8

    /// The pool the chunks are of (a worker thread serves one server for its life; compared,
    /// never followed).
    private let pool: ObjectIdentifier
    // @exclusivity(unchecked): thread-confined (see above); the dynamic checks guard nothing.
    @exclusivity(unchecked) private var cache = ContextCache(limit: WorkerWriteChunks.limit)

    private init(pool: ObjectIdentifier) {
        self.pool = pool
    }

    /// A chunk of `pool`'s for the caller to own: from the calling worker's cache, or straight
    /// from the pool on other threads. `port` is the server's (borrowed: the caller keeps it).
    static func take(from pool: ContextPool, port: Unmanaged<CompletionPort>) -> IOContext {
        guard let local = forCallingThread(pool: pool, port: port) else { return pool.take() }
        return local._withUnsafeGuaranteedRef { $0.cache.take(from: pool) }
    }

    /// Gives a chunk of `pool`'s back (not in flight): to the calling worker's cache, or straight
    /// to the pool on other threads.
    static func recycle(_ chunk: consuming IOContext, to pool: ContextPool, port: Unmanaged<CompletionPort>) {
        guard let local = forCallingThread(pool: pool, port: port) else { return pool.recycle(chunk) }
        var chunk: IOContext? = consume chunk
        local._withUnsafeGuaranteedRef { $0.cache.recycle(chunk.take().unsafelyUnwrapped, to: pool) }
    }

    /// The calling thread's cache of `pool`'s chunks: its existing one, or a new one when the
    /// thread is a worker of `port`'s pool; nil otherwise, or without a thread-specific slot.
    /// Unretained: the slot holds it until the thread exits.
    @inline(__always)
    private static func forCallingThread(
        pool: ContextPool, port: Unmanaged<CompletionPort>
    ) -> Unmanaged<WorkerWriteChunks>? {
        guard let key else { return nil }
        if let pointer = pthread_getspecific(key) {
            let local = Unmanaged<WorkerWriteChunks>.fromOpaque(pointer)
            return local._withUnsafeGuaranteedRef { $0.pool == ObjectIdentifier(pool) } ? local : nil
        }
        guard port._withUnsafeGuaranteedRef({ WorkerPool.callingThreadServes($0) }) else { return nil }
        let local = Unmanaged.passRetained(WorkerWriteChunks(pool: ObjectIdentifier(pool)))
        guard pthread_setspecific(key, local.toOpaque()) == 0 else {
            local.release()
            return nil
        }
        return local
    }

    /// The thread-specific slot; its destructor frees the thread's cache and the chunks in it.
    private static let key: pthread_key_t? = {
        var key = pthread_key_t()
        let result = pthread_key_create(&key) { pointer in
            if let pointer { Unmanaged<WorkerWriteChunks>.fromOpaque(pointer).release() }
        }
        return result == 0 ? key : nil
    }()
}
