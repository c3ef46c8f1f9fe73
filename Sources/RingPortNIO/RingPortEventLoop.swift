import CLiburing
import DequeModule
import Dispatch
import Glibc
import NIOCore
import RingPort
import Synchronization

/// A SwiftNIO event loop that is one ring of a ``RingPortEventLoopGroup``'s completion port.
///
/// ## Where its work runs
/// The loop is not a thread. Its work — the completions of the channels registered on it, the
/// tasks given to ``execute(_:)``, scheduled tasks whose time came — is run by the port's worker
/// threads, one thread at a time: a worker that has completions of the loop's ring in hand (a
/// batch of up to 32) becomes the loop's *runner* if nobody is, runs them and then everything
/// queued for the loop meanwhile, and stops being the runner once the queue is empty. A worker
/// that finds another runner queues its completions for that runner and goes back to the port.
/// So the loop's work never runs on two threads at once, runs in the order it arrived, and
/// ``inEventLoop`` is true exactly on the runner's thread while it runs the loop's work.
///
/// Normally the runner is the ring's leader, which reaps the ring's completions anyway: the loop
/// costs one uncontended lock per batch of completions. When a handler blocks, the port's sentry
/// hands the ring to a standby worker, which keeps reaping; completions for the blocked loop wait
/// in its queue (as they would behind a blocked NIOPosix event loop) and those of the ring's
/// other handles — there are none in a group, where a ring is one loop — would go on.
///
/// Tasks from other threads are queued and, when the loop has no runner, wake the ring with a
/// posted completion. Scheduled tasks are io_uring timeouts on the ring (`IORING_OP_TIMEOUT`);
/// cancelling one cancels its timeout.
///
/// Thread-safety: every member may be called from any thread, as SwiftNIO requires.
public final class RingPortEventLoop: EventLoop, @unchecked Sendable {
    // @unchecked: `channels` and `batch` are touched only by the loop's runner, one thread at
    // a time (see above); everything else is immutable, atomic or behind `work`'s lock.
    /// The ring this loop is (its index in the port).
    public let ring: Int
    /// The completion port of the loop's group.
    let port: CompletionPort
    /// The loop's own handle (an eventfd on its ring, never read): the completion key of its
    /// wake-ups and timers, which serialises them with each other.
    let handle: IOHandle
    private let work = LockedValue(LoopQueue())
    /// The runner's thread (`pthread_self`), 0 while nobody runs the loop. Written by the runner
    /// under `work`'s lock; read by ``inEventLoop`` without it (only the runner can find itself).
    private let runner = Atomic<UInt>(0)
    /// The channels registered on the loop, closed by a shutdown (loop-confined: touched by the
    /// runner only).
    @exclusivity(unchecked) private var channels: [ObjectIdentifier: any Channel] = [:]
    /// Work the runner took out of the queue and runs now (runner only; kept to reuse its storage).
    @exclusivity(unchecked) private var batch = Deque<LoopWork>()

    /// What the loop has queued, and whether someone runs it.
    private struct LoopQueue {
        var items = Deque<LoopWork>()
        /// A worker runs the loop's work now.
        var isRunning = false
        /// A wake-up completion is posted and not yet handled.
        var wakeUpPending = false
        /// The group shut down: tasks are refused.
        var isShutDown = false
    }

    /// One piece of the loop's work.
    enum LoopWork {
        /// A completion of one of the loop's channels or timers.
        case completion(Completion)
        /// A task given to ``execute(_:)``.
        case task(@Sendable () -> Void)
    }

    /// The posted value of a wake-up ("RPNIOWAK").
    static let wakeUpValue: UInt64 = 0x5250_4E49_4F57_414B

    init(ring: Int, port: CompletionPort) throws(RingPortError) {
        self.ring = ring
        self.port = port
        let descriptor = eventfd(0, Int32(EFD_CLOEXEC))
        try SystemCall.check(descriptor, "eventfd for event loop \(ring)")
        do throws(RingPortError) {
            handle = try port.associate(descriptor: descriptor, ring: ring)
        } catch {
            _ = SystemCall.close(descriptor)
            throw error
        }
    }

    // MARK: EventLoop

    /// Whether the calling thread runs this loop's work now.
    public var inEventLoop: Bool {
        runner.load(ordering: .relaxed) == pthread_self()
    }

    /// The current time, on the clock scheduled tasks use.
    public var now: NIODeadline { .now() }

    /// Queues `task` to run on the loop. After the group shut down, the task is dropped.
    public func execute(_ task: @escaping @Sendable () -> Void) {
        enqueue(.task(task))
    }

    /// Runs `task` on the loop; the future completes with its result.
    public func submit<T>(_ task: @escaping @Sendable () throws -> T) -> EventLoopFuture<T> {
        let promise = makePromise(of: T.self)
        let runs = enqueue(
            .task({
                // On the loop: the result does not leave it before the promise's callbacks run.
                do { promise.assumeIsolatedUnsafeUnchecked().succeed(try task()) } catch { promise.fail(error) }
            }))
        guard runs else {
            promise.fail(EventLoopError.shutdown)
            return promise.futureResult
        }
        return promise.futureResult
    }

    /// Runs `task` on the loop at `deadline` (an io_uring timeout on the loop's ring). Cancelling
    /// the returned `Scheduled` before the task started fails its future with
    /// `EventLoopError.cancelled`; after a shutdown the future fails with
    /// `EventLoopError.shutdown`.
    @discardableResult
    public func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        let promise = makePromise(of: T.self)
        let timer = LoopTimer { outcome in
            switch outcome {
            case .due:
                // On the loop, as in `submit`.
                do { promise.assumeIsolatedUnsafeUnchecked().succeed(try task()) } catch { promise.fail(error) }
            case .cancelled: promise.fail(EventLoopError.cancelled)
            case .shutDown: promise.fail(EventLoopError.shutdown)
            }
        }
        // A deadline that passed already (`scheduleTask(in: .zero)` reads the clock before this
        // does) is due at once: the unsigned difference would trap.
        let now = NIODeadline.now().uptimeNanoseconds
        let delay = Duration.nanoseconds(deadline.uptimeNanoseconds > now ? deadline.uptimeNanoseconds - now : 0)
        do {
            try port.timeout(after: min(delay, LoopTimer.longest), context: timer.context, handle: handle)
        } catch {
            timer.context.attachment = nil
            promise.fail(error.code == .portClosed || error.code == .handleClosed ? EventLoopError.shutdown : error)
        }
        return Scheduled(promise: promise) { [port] in timer.cancel(on: port) }
    }

    /// Runs `task` on the loop after `in`; see ``scheduleTask(deadline:_:)``.
    @discardableResult
    public func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        scheduleTask(deadline: .now() + delay, task)
    }

    /// Shuts the loop's whole group down: a ring cannot stop on its own. Prefer
    /// ``RingPortEventLoopGroup/shutdownGracefully(queue:_:)``.
    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
        queue.async { callback(EventLoopError.unsupportedOperation) }
    }

    // MARK: Running the loop's work (worker threads)

    /// Queues `item`; wakes the ring when the loop has no runner. Returns false after a shutdown.
    @discardableResult
    private func enqueue(_ item: LoopWork) -> Bool {
        enum Action { case none, wakeUp, refused }
        let action = work.withLock { queue -> Action in
            if queue.isShutDown { return .refused }
            queue.items.append(item)
            if queue.isRunning || queue.wakeUpPending { return .none }
            queue.wakeUpPending = true
            return .wakeUp
        }
        switch action {
        case .none:
            return true
        case .refused:
            return false
        case .wakeUp:
            do {
                try port.post(handle: handle, value: RingPortEventLoop.wakeUpValue)
            } catch {
                // The port is closing; the shutdown runs what is queued.
                work.withLock { $0.wakeUpPending = false }
            }
            return true
        }
    }

    /// Runs completions of the loop's ring (a worker's batch, in order): on this thread if
    /// nobody runs the loop (then also everything queued meanwhile), else queued for the runner.
    /// Called by the group's workers.
    func run(_ completions: ArraySlice<Completion>) {
        let me = pthread_self()
        let runsHere = work.withLock { queue -> Bool in
            if queue.isRunning {
                for completion in completions {
                    if Self.isWakeUp(completion) {
                        queue.wakeUpPending = false
                    } else {
                        queue.items.append(.completion(completion))
                    }
                }
                return false
            }
            if completions.contains(where: Self.isWakeUp) { queue.wakeUpPending = false }
            queue.isRunning = true
            runner.store(me, ordering: .relaxed)
            return true
        }
        guard runsHere else { return }
        for completion in completions where !Self.isWakeUp(completion) {
            RingPortEventLoop.dispatch(completion)
        }
        runUntilIdle()
    }

    /// Whether `completion` is the user post that wakes the ring for queued work.
    private static func isWakeUp(_ completion: Completion) -> Bool {
        completion.operation == .user && completion.userValue == wakeUpValue
    }

    /// Runs the queued work until the queue is empty, then gives the loop up.
    private func runUntilIdle() {
        while true {
            let more = work.withLock { queue -> Bool in
                if queue.items.isEmpty {
                    runner.store(0, ordering: .relaxed)
                    queue.isRunning = false
                    return false
                }
                swap(&queue.items, &batch)
                return true
            }
            guard more else { return }
            while let item = batch.popFirst() { perform(item) }
        }
    }

    private func perform(_ item: LoopWork) {
        switch item {
        case .task(let task):
            task()
        case .completion(let completion):
            RingPortEventLoop.dispatch(completion)
        }
    }

    /// Hands a completion to the channel or timer it belongs to (the context's `userValue` says
    /// which kind, so that no dynamic cast is needed).
    private static func dispatch(_ completion: Completion) {
        guard let context = completion.context, let attachment = context.attachment,
            let target = CompletionTarget(rawValue: context.userValue)
        else {
            // Not one of the layer's operations: do not leak what it carries.
            completion.discardCarriedResources()
            return
        }
        switch target {
        case .timer:
            unsafeDowncast(attachment, to: LoopTimer.self).complete(completion)
        case .socketChannel:
            unsafeDowncast(attachment, to: SocketChannel.self).complete(completion)
        case .serverSocketChannel:
            unsafeDowncast(attachment, to: ServerSocketChannel.self).complete(completion)
        }
    }

    // MARK: Channels and shutdown

    /// Adds a channel to the loop's registry (on the loop).
    func register(_ channel: any Channel) {
        channels[ObjectIdentifier(channel)] = channel
    }

    /// Removes a channel from the loop's registry (on the loop).
    func unregister(_ channel: any Channel) {
        channels[ObjectIdentifier(channel)] = nil
    }

    /// Closes every channel registered on the loop (on the loop; the first step of a shutdown).
    func closeAllChannels() {
        for channel in channels.values { channel.close(promise: nil) }
    }

    /// Refuses further tasks and runs, as the loop's runner on the calling thread, the work
    /// still queued (the workers are gone). The last step of a shutdown.
    func finishShutdown() {
        let me = pthread_self()
        let idle = work.withLock { queue -> Bool in
            queue.isShutDown = true
            if queue.isRunning { return false }
            queue.isRunning = true
            runner.store(me, ordering: .relaxed)
            return true
        }
        if idle { runUntilIdle() }
        channels = [:]
    }

    /// Whether the loop refuses tasks (its group shut down).
    var isShutDown: Bool {
        work.withLock { $0.isShutDown }
    }
}

extension RingPortEventLoop: CustomStringConvertible {
    /// "RingPortEventLoop(ring: N)".
    public var description: String { "RingPortEventLoop(ring: \(ring))" }
}

/// Which object of the layer a context's completion goes to (its `userValue`; the high bytes
/// are the layer's mark, "RPNIO", so that an application's own context on the port is never
/// taken for one of them).
enum CompletionTarget: UInt64 {
    /// A ``LoopTimer`` (scheduled task).
    case timer = 0x5250_4E49_4F00_0001
    /// A ``SocketChannel``'s receive, send or connect.
    case socketChannel = 0x5250_4E49_4F00_0002
    /// A ``ServerSocketChannel``'s accept.
    case serverSocketChannel = 0x5250_4E49_4F00_0003
}
