import Glibc

/// A pthread mutex paired with one condition variable that measures time on the monotonic clock.
///
/// Thread-safety: all methods may be called from any thread; that is the point of the type.
/// Ownership: the mutex (a ``PThreadMutex``) and the condition live in memory this object
/// allocates and frees; the pointers never leave it.
final class ConditionMutex: @unchecked Sendable {
    // @unchecked: the pthread objects are only touched through pthread calls, which are
    // thread-safe by definition; the pointers themselves are immutable.
    private let mutex = PThreadMutex()
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    init() {
        condition = .allocate(capacity: 1)
        var conditionAttributes = pthread_condattr_t()
        pthread_condattr_init(&conditionAttributes)
        pthread_condattr_setclock(&conditionAttributes, CLOCK_MONOTONIC)
        precondition(pthread_cond_init(condition, &conditionAttributes) == 0, "pthread_cond_init failed")
        pthread_condattr_destroy(&conditionAttributes)
    }

    /// The address of the mutex's futex word: where a thread blocked in `lock()` waits (see
    /// ``ThreadSchedule/isWaitingForFutex(at:)``).
    var lockAddress: UInt {
        UInt(bitPattern: mutex.address)
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
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
        var when = deadline.absoluteTime
        let result = pthread_cond_timedwait(condition, mutex.address, &when)
        assert(result == 0 || result == ETIMEDOUT, "pthread_cond_timedwait: \(result)")
    }

    /// Wakes one waiter.
    func signal() {
        pthread_cond_signal(condition)
    }

    /// Wakes every waiter.
    func broadcast() {
        pthread_cond_broadcast(condition)
    }
}
