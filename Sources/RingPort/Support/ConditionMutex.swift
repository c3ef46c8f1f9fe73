import Glibc

/// A pthread mutex paired with one condition variable that measures time on the monotonic clock.
///
/// Thread-safety: all methods may be called from any thread; that is the point of the type.
/// Ownership: the mutex and condition live in memory this object allocates and frees; the
/// pointers never leave it.
final class ConditionMutex: @unchecked Sendable {
    // @unchecked: the pthread objects are only touched through pthread calls, which are
    // thread-safe by definition; the pointers themselves are immutable.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        var mutexAttributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&mutexAttributes)
        #if DEBUG
        pthread_mutexattr_settype(&mutexAttributes, Int32(PTHREAD_MUTEX_ERRORCHECK))
        #endif
        precondition(pthread_mutex_init(mutex, &mutexAttributes) == 0, "pthread_mutex_init failed")
        pthread_mutexattr_destroy(&mutexAttributes)

        var conditionAttributes = pthread_condattr_t()
        pthread_condattr_init(&conditionAttributes)
        pthread_condattr_setclock(&conditionAttributes, CLOCK_MONOTONIC)
        precondition(pthread_cond_init(condition, &conditionAttributes) == 0, "pthread_cond_init failed")
        pthread_condattr_destroy(&conditionAttributes)
    }

    /// The address of the mutex's futex word: where a thread blocked in `lock()` waits (see
    /// ``ThreadSchedule/isWaitingForFutex(at:)``).
    var lockAddress: UInt {
        UInt(bitPattern: mutex)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    @inline(__always)
    func lock() {
        let result = pthread_mutex_lock(mutex)
        assert(result == 0, "pthread_mutex_lock: \(result)")
    }

    @inline(__always)
    func unlock() {
        let result = pthread_mutex_unlock(mutex)
        assert(result == 0, "pthread_mutex_unlock: \(result)")
    }

    /// Runs `body` with the mutex held.
    @inline(__always)
    func withLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits on the condition; the mutex must be held and is held again on return.
    /// Wakes up spuriously at times, like every condition variable: re-check the predicate.
    func wait() {
        let result = pthread_cond_wait(condition, mutex)
        assert(result == 0, "pthread_cond_wait: \(result)")
    }

    /// Waits on the condition until `deadline` (monotonic nanoseconds) at the latest; the mutex
    /// must be held and is held again on return.
    func wait(until deadline: MonotonicInstant) {
        var when = deadline.absoluteTime
        let result = pthread_cond_timedwait(condition, mutex, &when)
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
