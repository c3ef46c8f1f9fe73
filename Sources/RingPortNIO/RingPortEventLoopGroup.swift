import Dispatch
import Logging
import NIOCore
import RingPort
import Synchronization

/// A SwiftNIO `EventLoopGroup` on a RingPort completion port: one ``RingPortEventLoop`` per
/// ring, run by the port's worker pool (CPU × 2 + 2 threads by default, as everywhere in
/// RingPort).
///
/// Channels made by ``RingPortServerBootstrap`` and ``RingPortClientBootstrap`` on this group
/// do their I/O as completion-port operations on their loop's ring: receives into the ring's
/// provided buffers, sends from the `ByteBuffer`s written to them (gathered at `flush`).
///
/// Lifetime: call ``shutdownGracefully(queue:_:)`` (or `syncShutdownGracefully()`, or
/// `shutdownGracefully()` from async code) once: it closes every channel, waits until their
/// operations completed, stops the workers and closes the port. Without it the workers keep
/// running (they hold the port).
///
/// Thread-safety: every member may be called from any thread.
public final class RingPortEventLoopGroup: EventLoopGroup, Sendable {
    /// How to build a group.
    public struct Configuration: Sendable {
        /// The completion port: rings (one event loop each), ring sizes, worker count. Its
        /// provided buffers (1,024 of 16 KiB per ring by default) are what channels receive
        /// into; without them (`nil`, kernels before 5.19, the epoll backend) each channel
        /// receives into a buffer of its own of ``receiveBufferSize`` bytes.
        public var port: CompletionPort.Configuration = {
            var port = CompletionPort.Configuration()
            port.providedBuffers = .init(count: 1024, size: 16384)
            return port
        }()
        /// Bytes of a channel's own receive buffer when it cannot receive into provided buffers.
        public var receiveBufferSize = 16384

        /// The defaults.
        public init() {}
    }

    /// The completion port under the loops.
    public let port: CompletionPort
    /// The configuration the group was built with.
    public let configuration: Configuration
    /// Whether channels receive into the port's provided buffers.
    let usesProvidedBuffers: Bool
    private let loops: [RingPortEventLoop]
    private let workers: WorkerPool
    private let nextLoop = Atomic<Int>(0)
    private let state = Atomic<UInt8>(RingPortEventLoopGroup.running)
    private static let running: UInt8 = 0
    private static let stopping: UInt8 = 1

    /// Creates the port, one loop per ring, and starts the workers.
    ///
    /// - Throws: `RingPortError` when io_uring and epoll are both unavailable, a size is out of
    ///   range, or a worker thread cannot start.
    public init(configuration: Configuration = .init()) throws(RingPortError) {
        guard configuration.receiveBufferSize >= 1 else {
            throw RingPortError(.invalidArgument, operation: "RingPortEventLoopGroup receive buffer size below 1 byte")
        }
        self.configuration = configuration
        let port = try CompletionPort(configuration: configuration.port)
        self.port = port
        usesProvidedBuffers = port.supportsMultishotReceive
        do {
            loops = try (0..<port.ringCount).map { ring throws(RingPortError) in
                try RingPortEventLoop(ring: ring, port: port)
            }
        } catch {
            port.close()
            throw error
        }
        let loops = self.loops
        workers = WorkerPool(port: port, name: "ringport-nio", maximumBatch: RingPortEventLoopGroup.maximumBatch) {
            RingPortEventLoopGroup.run(&$0, loops: loops)
        }
        do {
            try workers.start()
        } catch {
            port.close()
            throw error
        }
    }

    /// How many completions a worker dequeues at a time: a loop runs them in one turn (one pass
    /// through the ring's lock and the loop's for all of them).
    static let maximumBatch = 32

    /// A worker's handler: each run of completions of one ring goes to that ring's loop (a
    /// worker's batch is all of its own ring, unless it served a ring left without workers).
    private static func run(_ batch: inout [Completion], loops: [RingPortEventLoop]) {
        var start = batch.startIndex
        while start < batch.endIndex {
            guard let ring = batch[start].handle?.id.ring else {
                // Not one of the layer's operations: do not leak what it carries.
                batch[start].discardCarriedResources()
                start += 1
                continue
            }
            var end = start + 1
            while end < batch.endIndex, batch[end].handle?.id.ring == ring { end += 1 }
            loops[ring].run(batch[start..<end])
            start = end
        }
    }

    // MARK: EventLoopGroup

    /// The next loop, round-robin.
    public func next() -> EventLoop {
        nextRingLoop()
    }

    /// The loop running the calling thread's work if there is one, else ``next()``.
    public func any() -> EventLoop {
        loops.first { $0.inEventLoop } ?? nextRingLoop()
    }

    /// The loops, one per ring.
    public func makeIterator() -> EventLoopIterator {
        EventLoopIterator(loops.map { $0 as EventLoop })
    }

    func nextRingLoop() -> RingPortEventLoop {
        loops.count == 1 ? loops[0] : loops[nextLoop.wrappingAdd(1, ordering: .relaxed).oldValue % loops.count]
    }

    /// Shuts the group down: closes every channel on every loop, waits until their operations
    /// completed (up to 10 s), fails scheduled tasks with `EventLoopError.shutdown`, stops the
    /// workers, handles what they left on the stopping thread (as the loops' runner), and closes
    /// the port; then calls `callback` on `queue` (with
    /// `EventLoopError.shutdown` if the group was shut down before). Must not be called from one
    /// of the group's loops' work when waiting for it (`syncShutdownGracefully`).
    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
        guard
            state.compareExchange(
                expected: RingPortEventLoopGroup.running, desired: RingPortEventLoopGroup.stopping,
                ordering: .acquiringAndReleasing
            ).exchanged
        else {
            queue.async { callback(EventLoopError.shutdown) }
            return
        }
        // Without a thread of its own, the group stops on the calling thread (or, from a loop's
        // work, on Swift's global executor): the shutdown happens either way, once.
        PThread.runDetached(name: "ringport-nio-stop") { [self] in
            stop()
            queue.async { callback(nil) }
        }
    }

    /// Traps when `syncShutdownGracefully()` is called from a loop's work, as NIOPosix does: the
    /// shutdown waits for the group's workers to stop, and the caller is one of them, so it
    /// would never return.
    public func _preconditionSafeToSyncShutdown(file: StaticString, line: UInt) {
        if let loop = loops.first(where: { $0.inEventLoop }) {
            preconditionFailure(
                """
                BUG DETECTED: syncShutdownGracefully() must not be called on an event loop (\(loop)): it waits for \
                the group's workers, the caller among them, and would never return
                """,
                file: file, line: line)
        }
    }

    /// The shutdown, on a thread of its own (it waits for the loops).
    private func stop() {
        // Twice: a connect or accept that completed just before the first pass may add a channel.
        for _ in 0..<2 {
            let closed = loops.map { loop in loop.submit { loop.closeAllChannels() } }
            for future in closed { _ = try? future.wait() }
        }
        // Closing the handles cancels what is still in flight (scheduled tasks, operations of
        // channels closing); the workers handle those completions as usual.
        port.closeAllHandles()
        _ = waitUntil(MonotonicInstant.now.advanced(by: .seconds(10))) { port.isIdle }
        workers.shutdown()
        // What a handler still busy after the wait held until its worker stopped: handled here,
        // on this thread, so that every channel sees its last completions.
        workers.handleRemaining(for: .seconds(1))
        for loop in loops { loop.finishShutdown() }
        port.close()
    }
}
