import Glibc

/// A pthread mutex paired with two condition variables that measure time on the monotonic
/// clock: the condition, for any number of waiters, and a second one, for a waiter that must be
/// woken alone (a ring's sentry: waking it through the first would wake the others too).
///
/// Thread-safety: all methods may be called from any thread; that is the point of the type.
/// Ownership: the mutex (a ``PThreadMutex``) and the conditions live in memory this object
/// allocates and frees; the pointers never leave it.
final class ConditionMutex: @unchecked Sendable {
    // @unchecked: the pthread objects are only touched through pthread calls, which are
    // thread-safe by definition; the pointers themselves are immutable.
    private let mutex = PThreadMutex()
    /// The condition (`conditions[0]`) and the second one (`conditions[1]`).
    private let conditions: UnsafeMutablePointer<pthread_cond_t>
    private var condition: UnsafeMutablePointer<pthread_cond_t> { conditions }
    private var secondCondition: UnsafeMutablePointer<pthread_cond_t> { conditions + 1 }

    init() {
        conditions = .allocate(capacity: 2)
        var conditionAttributes = pthread_condattr_t()
        pthread_condattr_init(&conditionAttributes)
        pthread_condattr_setclock(&conditionAttributes, CLOCK_MONOTONIC)
        for index in 0..<2 {
            precondition(
                pthread_cond_init(conditions + index, &conditionAttributes) == 0, "pthread_cond_init failed")
        }
        pthread_condattr_destroy(&conditionAttributes)
    }

    /// The address of the mutex's futex word: where a thread blocked in `lock()` waits (see
    /// ``ThreadSchedule/isWaitingForFutex(at:)``).
    var lockAddress: UInt {
        UInt(bitPattern: mutex.address)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_cond_destroy(secondCondition)
        conditions.deallocate()
    }

    @inline(__always)
    func lock() {
        mutex.lock()
    }

    @inline(__always)
    func unlock() {
        mutex.unlock()
    }

    /// Runs `body` with the mutex held.
    @inline(__always)
    func withLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        try mutex.withLock(body)
    }

    /// Waits on the condition; the mutex must be held and is held again on return.
    /// Wakes up spuriously at times, like every condition variable: re-check the predicate.
    func wait() {
        let result = pthread_cond_wait(condition, mutex.address)
        assert(result == 0, "pthread_cond_wait: \(result)")
    }

    /// Waits on the condition until `deadline` (monotonic nanoseconds) at the latest; the mutex
    /// must be held and is held again on return.
    func wait(until deadline: MonotonicInstant) {
        Self.wait(on: condition, mutex: mutex, until: deadline)
    }

    /// Waits on the second condition until `deadline` at the latest (``signalSecond()`` and
    /// ``broadcast()`` wake it); the mutex must be held and is held again on return. Wakes up
    /// spuriously at times.
    func waitOnSecond(until deadline: MonotonicInstant) {
        Self.wait(on: secondCondition, mutex: mutex, until: deadline)
    }

    private static func wait(
        on condition: UnsafeMutablePointer<pthread_cond_t>, mutex: borrowing PThreadMutex,
        until deadline: MonotonicInstant
    ) {
        var when = deadline.absoluteTime
        let result = pthread_cond_timedwait(condition, mutex.address, &when)
        assert(result == 0 || result == ETIMEDOUT, "pthread_cond_timedwait: \(result)")
    }

    /// Wakes one waiter of the condition.
    func signal() {
        pthread_cond_signal(condition)
    }

    /// Wakes the waiter of the second condition.
    func signalSecond() {
        pthread_cond_signal(secondCondition)
    }

    /// Wakes every waiter, of both conditions.
    func broadcast() {
        pthread_cond_broadcast(condition)
        pthread_cond_broadcast(secondCondition)
    }
}
