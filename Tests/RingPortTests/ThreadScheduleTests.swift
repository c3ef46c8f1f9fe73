import Glibc
import RingPortTestSupport
import Synchronization
import Testing

@testable import RingPort

extension RingPortTests {
    /// Reading another thread's scheduler statistics: what the sentry uses to tell a blocked
    /// leader from a busy or preempted one.
    @Suite struct ThreadScheduleTests {
        /// Starts a thread that runs `body` after publishing its kernel ID; returns the ID.
        func startThread(_ body: @escaping @Sendable () -> Void) throws -> (id: Int32, thread: PThread) {
            let box = LockedBox<Int32>(0)
            let thread = try PThread(name: "schedule-test") {
                box.withLock { $0 = ThreadSchedule.currentThreadID }
                body()
            }
            try #require(eventually { box.withLock { $0 } != 0 })
            return (box.withLock { $0 }, thread)
        }

        @Test func aSleepingThreadWasBlockedAndAComputingOneWasNot() throws {
            // Both run until the windows below are done, however slowly this machine runs.
            let done = Atomic<Bool>(false)
            let sleeper = try startThread {
                while !done.load(ordering: .relaxed) { usleep(20_000) }
            }
            defer {
                done.store(true, ordering: .relaxed)
                sleeper.thread.join()
            }
            let spinner = try startThread {
                var spins: UInt64 = 0
                while !done.load(ordering: .relaxed) { spins &+= 1 }
                blackHole(spins)
            }
            defer {
                done.store(true, ordering: .relaxed)
                spinner.thread.join()
            }
            let sleeping = try #require(ThreadSchedule(threadID: sleeper.id))
            let computing = try #require(ThreadSchedule(threadID: spinner.id))
            // Three windows of 40 ms while both threads go on. The sleeper is blocked in each.
            // The spinner must be seen active in at least one: a virtual CPU the hypervisor
            // takes away (steal time) counts neither as running nor as waiting, and on this
            // shared 2-CPU machine a single 50 ms window once lost 31 ms so.
            var spinnerSeenActive = false
            for _ in 0..<3 {
                let sleepingBefore = try #require(sleeping.read())
                let computingBefore = try #require(computing.read())
                usleep(40_000)
                let sleepingAfter = try #require(sleeping.read())
                let computingAfter = try #require(computing.read())
                #expect(RingLeadership.wasBlocked(from: sleepingBefore, to: sleepingAfter))
                if !RingLeadership.wasBlocked(from: computingBefore, to: computingAfter) { spinnerSeenActive = true }
            }
            #expect(spinnerSeenActive, "a computing thread was not seen as blocked in at least one window")
        }

        @Test func aThreadWaitingForALockIsSeenWaitingForItsFutex() throws {
            let lock = ConditionMutex()
            let other = ConditionMutex()
            lock.lock()
            let waiter = try startThread {
                lock.lock()
                lock.unlock()
            }
            let schedule = try #require(ThreadSchedule(threadID: waiter.id))
            #expect(eventually { schedule.isWaitingForFutex(at: lock.lockAddress) })
            #expect(!schedule.isWaitingForFutex(at: other.lockAddress))
            lock.unlock()
            waiter.thread.join()
        }

        /// A file that opens but does not read as scheduler statistics gives nil, and its
        /// descriptor is closed once: the failure path closed it, and then the `deinit` that a
        /// failable class initializer still runs closed the number again (in debug builds, the
        /// second close's EBADF traps).
        @Test func anUnreadableFileIsClosedOnce() throws {
            for _ in 0..<3 {
                #expect(ThreadSchedule(threadID: ThreadSchedule.currentThreadID, statisticsPath: "/dev/null") == nil)
            }
        }

        @Test func aThreadThatIsGoneCannotBeRead() throws {
            let finished = try startThread {}
            finished.thread.join()
            #expect(eventually { ThreadSchedule(threadID: finished.id) == nil })
        }
    }
}
