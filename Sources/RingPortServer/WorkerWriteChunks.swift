import RingPort

/// One worker thread's few idle write chunks: a ``ContextCache`` of the server's chunk pool, so
/// that copying a write into a new chunk and recycling a sent one pass through the pool's lock
/// once per batch instead of each time (two lock round trips per echoed message before).
///
/// Thread-confined: created for a worker of the server's pool on its first use (never for
/// another thread, such as the one that handles what the workers left at shutdown, where it
/// would outlive the pool), kept by that worker (`CompletionWorker.ownerState(_:orMake:)`), and
/// freed with the worker when its thread's loop ends, with the chunks it keeps. At most
/// ``limit`` chunks per worker stay outside the pool, where its idle trim does not see them. Not
/// `Sendable`, and never handed to another thread.
final class WorkerWriteChunks {
    /// The most chunks a worker keeps: batches of 4 with the pool.
    static let limit = 8

    // @exclusivity(unchecked): thread-confined (see above); the dynamic checks guard nothing.
    @exclusivity(unchecked) private var cache = ContextCache(limit: WorkerWriteChunks.limit)

    private init() {}

    /// A chunk of `pool`'s for the caller to own: from the calling worker's cache, or straight
    /// from the pool on other threads. `pool` and `port` are the server's (`port` borrowed: the
    /// caller keeps it).
    static func take(from pool: ContextPool, port: Unmanaged<CompletionPort>) -> IOContext {
        guard let local = forCallingThread(port: port) else { return pool.take() }
        return local._withUnsafeGuaranteedRef { $0.cache.take(from: pool) }
    }

    /// Gives a chunk of `pool`'s back (not in flight): to the calling worker's cache, or straight
    /// to the pool on other threads.
    static func recycle(_ chunk: consuming IOContext, to pool: ContextPool, port: Unmanaged<CompletionPort>) {
        guard let local = forCallingThread(port: port) else { return pool.recycle(chunk) }
        var chunk: IOContext? = consume chunk
        local._withUnsafeGuaranteedRef { $0.cache.recycle(chunk.take().unsafelyUnwrapped, to: pool) }
    }

    /// The cache of the calling thread's worker when the thread is a worker of `port`'s pool
    /// (whose chunks are of the server's one pool), made on first use; nil on any other thread.
    /// Unretained: the worker keeps it.
    @inline(__always)
    private static func forCallingThread(port: Unmanaged<CompletionPort>) -> Unmanaged<WorkerWriteChunks>? {
        CompletionWorker.ownerStateOfCallingThread(WorkerWriteChunks.self, servingPort: port) { WorkerWriteChunks() }
    }
}
