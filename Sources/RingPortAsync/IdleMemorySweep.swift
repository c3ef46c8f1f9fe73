import RingPort
import Synchronization

/// Gives back what a burst of connections left behind, as the server's sweep does.
///
/// Once a second (a task on Swift's global executor, which keeps nothing in flight on the
/// port) it frees the pooled contexts and the depot's byte buffers that stayed idle since the
/// previous sweep, and when connections closed in numbers since then (or many contexts were
/// freed) it asks the C allocator to return free pages to the system (`malloc_trim`): the
/// memory of closed connections — their objects, their tasks' frames, their contexts — is
/// freed to the allocator's arenas, which keep it otherwise.
///
/// Thread-safety: ``connectionOpened()`` and ``connectionClosed()`` from any thread; the sweep
/// itself runs on its own task.
final class IdleMemorySweep: Sendable {
    /// Connections open now.
    private let openConnections = Atomic<Int>(0)
    /// The most connections open since the last time memory was returned.
    private let highMark = Atomic<Int>(0)
    private let pools: [ContextPool]
    private let depot: ByteBufferDepot
    private let task = LockedValue<Task<Void, Never>?>(nil)

    /// Closed connections (or freed contexts) since the last return that make the next sweep
    /// return memory to the system.
    static let returnThreshold = 256

    init(pools: [ContextPool], depot: ByteBufferDepot) {
        self.pools = pools
        self.depot = depot
    }

    /// Starts sweeping once a second until ``stop()``.
    func start() {
        task.withLock { task in
            task = Task.detached { [self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    if Task.isCancelled { break }
                    sweep()
                }
            }
        }
    }

    /// Stops sweeping.
    func stop() {
        task.withLock { $0?.cancel() }
    }

    func connectionOpened() {
        let open = openConnections.add(1, ordering: .relaxed).newValue
        _ = highMark.max(open, ordering: .relaxed)
    }

    func connectionClosed() {
        openConnections.subtract(1, ordering: .relaxed)
    }

    /// One sweep: trims the pools, and returns free memory after a burst closed.
    func sweep() {
        var freed = 0
        for pool in pools { freed += pool.trimIdle() }
        freed += depot.trimIdle()
        let open = openConnections.load(ordering: .relaxed)
        let closed = highMark.load(ordering: .relaxed) - open
        guard closed >= IdleMemorySweep.returnThreshold || freed >= IdleMemorySweep.returnThreshold else { return }
        highMark.store(open, ordering: .relaxed)
        SystemInfo.returnFreeMemoryToSystem()
    }
}
