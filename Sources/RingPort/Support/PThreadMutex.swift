import Glibc

/// A pthread mutex, for state that other modules of the package keep inline in their own objects
/// (one allocation, the mutex itself, instead of a ``LockedValue``), and the mutex of
/// ``ConditionMutex``.
///
/// Used instead of `Synchronization.Mutex` for the same reason as ``LockedValue``:
/// ThreadSanitizer intercepts pthread mutexes, but not the futex-based `Mutex`, whose lock and
/// unlock live in the standard library (not instrumented), so the suite under TSan reported
/// races on every value it guards.
///
/// Thread-safety: ``lock()`` and ``unlock()`` from any thread. Non-copyable: the owner destroys
/// it when it goes.
package struct PThreadMutex: ~Copyable, @unchecked Sendable {
    // @unchecked: the pthread object is only touched through pthread calls; the pointer is
    // immutable.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    package init() {
        mutex = .allocate(capacity: 1)
        Self.initialize(at: mutex)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    package func lock() {
        Self.lock(at: mutex)
    }

    @inline(__always)
    package func unlock() {
        Self.unlock(at: mutex)
    }

    /// Initialises a pthread mutex in memory its owner provides (say, inside an object, which
    /// saves the allocation and the pointer of an instance): error-checking in debug builds,
    /// the default kind otherwise. The owner destroys it (`pthread_mutex_destroy`).
    package static func initialize(at address: UnsafeMutablePointer<pthread_mutex_t>) {
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        #if DEBUG
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_ERRORCHECK))
        #endif
        precondition(pthread_mutex_init(address, &attributes) == 0, "pthread_mutex_init failed")
        pthread_mutexattr_destroy(&attributes)
    }

    /// Locks the mutex at `address` (see ``initialize(at:)``).
    @inline(__always)
    package static func lock(at address: UnsafeMutablePointer<pthread_mutex_t>) {
        let result = pthread_mutex_lock(address)
        assert(result == 0, "pthread_mutex_lock: \(result)")
    }

    /// Unlocks the mutex at `address`.
    @inline(__always)
    package static func unlock(at address: UnsafeMutablePointer<pthread_mutex_t>) {
        let result = pthread_mutex_unlock(address)
        assert(result == 0, "pthread_mutex_unlock: \(result)")
    }

    /// Runs `body` with the mutex held.
    @inline(__always)
    package func withLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        lock()
        defer { unlock() }
        return try body()
    }

    /// The pthread object, for a condition variable waiting with it (``ConditionMutex``). Valid
    /// while the mutex lives.
    var address: UnsafeMutablePointer<pthread_mutex_t> {
        mutex
    }
}
