import Dispatch
import Glibc
import NIOCore
import RingPort
import RingPortNIO
import RingPortTestSupport
import Synchronization
import Testing

extension RingPortNIOTests {
    /// The event loop's contract: its work runs one piece at a time, in order, on a thread
    /// that sees `inEventLoop`; scheduled tasks run at their time unless cancelled; a shutdown
    /// fails what is still scheduled.
    @Suite struct EventLoopTests {
        /// Tasks from four threads at once: each runs on the loop, none overlaps another, and
        /// each thread's tasks run in the order it gave them.
        @Test func tasksRunOnTheLoopOneAtATimeInOrder() throws {
            try withGroupLeavingNoDescriptors { group in
                let loop = group.next()
                #expect(!loop.inEventLoop)
                let running = Atomic<Int>(0)
                let overlaps = Atomic<Int>(0)
                let order = LockedBox<[[Int]]>(Array(repeating: [], count: 4))
                let notOnLoop = Atomic<Int>(0)
                DispatchQueue.concurrentPerform(iterations: 4) { thread in
                    for index in 0..<500 {
                        loop.execute {
                            if running.wrappingAdd(1, ordering: .relaxed).newValue != 1 {
                                overlaps.add(1, ordering: .relaxed)
                            }
                            if !loop.inEventLoop { notOnLoop.add(1, ordering: .relaxed) }
                            order.withLock { $0[thread].append(index) }
                            running.subtract(1, ordering: .relaxed)
                        }
                    }
                }
                let total = try loop.submit { order.withLock { $0.map(\.count).reduce(0, +) } }.wait()
                #expect(total == 2000)
                let overlapCount = overlaps.load(ordering: .relaxed)
                #expect(overlapCount == 0)
                let offLoopCount = notOnLoop.load(ordering: .relaxed)
                #expect(offLoopCount == 0)
                #expect(order.withLock { $0 }.allSatisfy { $0 == Array(0..<500) })
            }
        }

        /// A task scheduled 50 ms ahead runs no sooner; one cancelled before its time never
        /// runs and its future fails with `cancelled`; a shutdown fails one still waiting.
        @Test func scheduledTasksRunAtTheirTimeUnlessCancelled() throws {
            let descriptorsBefore = DescriptorSnapshot()
            let group = try makeGroup()
            let loop = group.next()
            let start = NIODeadline.now()
            let value = try loop.scheduleTask(in: .milliseconds(50)) { () -> Int in
                #expect(loop.inEventLoop)
                return 42
            }.futureResult.wait()
            #expect(value == 42)
            #expect(NIODeadline.now() - start >= .milliseconds(50))

            let ran = Atomic<Bool>(false)
            let cancelled = loop.scheduleTask(in: .seconds(5)) { ran.store(true, ordering: .relaxed) }
            cancelled.cancel()
            #expect(throws: EventLoopError.cancelled) { try cancelled.futureResult.wait() }
            let didRun = ran.load(ordering: .relaxed)
            #expect(!didRun)

            // Its failure is observed by a callback added before the shutdown: a loop takes no
            // tasks afterwards (as NIOPosix's), and adding a callback from elsewhere is one.
            let pending = loop.scheduleTask(in: .hours(1)) { ran.store(true, ordering: .relaxed) }
            let failure = LockedBox<Error?>(nil)
            try loop.submit { pending.futureResult.whenFailure { error in failure.withLock { $0 = error } } }.wait()
            try group.syncShutdownGracefully()
            #expect(failure.withLock { $0 as? EventLoopError } == .shutdown)
            let ranAfterShutdown = ran.load(ordering: .relaxed)
            #expect(!ranAfterShutdown)
            #expect(group.port.statistics.operationsInFlight == 0)
            #expect(
                eventually { descriptorsBefore.allClosedAgain }, "still open: \(descriptorsBefore.openedSince)")
        }

        /// A task whose deadline has passed already runs at once, on the loop: with no delay,
        /// with a deadline in the past, and as the first run of a repeated task without an
        /// initial delay. (Before, the unsigned difference of the deadline and the clock trapped.)
        @Test func tasksDueAlreadyRunAtOnce() throws {
            try withGroupLeavingNoDescriptors { group in
                let loop = group.next()
                let now = try loop.scheduleTask(in: .zero) { loop.inEventLoop }.futureResult.wait()
                #expect(now)
                let past = try loop.scheduleTask(deadline: .now() - .seconds(1)) { 7 }.futureResult.wait()
                #expect(past == 7)
                let runs = Atomic<Int>(0)
                let promise = loop.makePromise(of: Void.self)
                let repeated = loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { task in
                    if runs.wrappingAdd(1, ordering: .relaxed).newValue == 3 {
                        task.cancel()
                        promise.succeed()
                    }
                }
                try promise.futureResult.wait()
                _ = repeated
                #expect(runs.load(ordering: .relaxed) == 3)
            }
        }

        /// A promise made on the loop completes its callbacks on the loop.
        @Test func futuresCompleteOnTheirLoop() throws {
            try withGroupLeavingNoDescriptors { group in
                let loop = group.next()
                let promise = loop.makePromise(of: Int.self)
                let onLoop = promise.futureResult.map { _ in loop.inEventLoop }
                DispatchQueue.global().async { promise.succeed(1) }
                let ranOnLoop = try onLoop.wait()
                #expect(ranOnLoop)
            }
        }

        /// A shutdown when no thread can be created: the group stops on the calling thread, and
        /// the callback comes once. (Before, the stop ran a second time, which waited forever
        /// for loops that were gone.)
        @Test(.timeLimit(.minutes(1))) func aShutdownWithoutAThreadOfItsOwnCallsBackOnce() async throws {
            let group = try makeGroup()
            let callbacks = LockedBox<[String]>([])
            PThread.creationFailureCountdown.store(1, ordering: .relaxed)
            group.shutdownGracefully(queue: .global()) { error in
                callbacks.withLock { $0.append(error.map { "\($0)" } ?? "stopped") }
            }
            #expect(PThread.creationFailureCountdown.load(ordering: .relaxed) == 0, "a thread was started")
            #expect(await eventuallyAsync { !callbacks.withLock { $0.isEmpty } })
            try await Task.sleep(for: .milliseconds(200))  // a second callback would follow at once
            #expect(callbacks.withLock { $0 } == ["stopped"])
        }

        /// syncShutdownGracefully() from a loop's own work would wait for itself: the process
        /// stops with a message that says so, as on NIOPosix (an exit test, in a child process).
        @Test func syncShutdownFromALoopTraps() async {
            let result = await #expect(processExitsWith: .signal(SIGILL), observing: [\.standardErrorContent]) {
                let group = try makeGroup()
                try await group.next().submit { try group.syncShutdownGracefully() }.get()
            }
            let message = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
            #expect(message.contains("syncShutdownGracefully() must not be called on an event loop"), "\(message)")
        }
    }
}
