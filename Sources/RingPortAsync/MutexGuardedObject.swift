import Glibc
import RingPort

/// The base of the async layer's per-connection state object (``ConnectionStreams``): a pthread
/// mutex stored inside the object itself.
///
/// A `PThreadMutex` is an allocation of its own, reached through a pointer: 56 bytes more per
/// object and, with a thousand connections, a cache miss more per lock. Here the
/// `pthread_mutex_t` is the class's first stored property, at a fixed offset from the object's
/// start (`_getUnsafePointerToStoredProperties`, what swift-atomics' `ManagedAtomic` relies on
/// too), and only ever touched through pthread calls at that address. A pthread mutex rather
/// than `Synchronization.Mutex` for ThreadSanitizer's sake (see `PThreadMutex`).
///
/// Thread-safety: ``withMutex(_:)`` from any thread.
@usableFromInline
class MutexGuardedObject: @unchecked Sendable {
    // @unchecked: the mutex is only touched through pthread calls; subclasses say what it
    // guards.
    /// Must stay the first stored property (see ``mutexAddress``).
    private var mutexStorage = pthread_mutex_t()

    init() {
        // The layout this relies on, checked in debug builds (every test run).
        assert(
            withUnsafeMutablePointer(to: &mutexStorage) { UnsafeMutableRawPointer($0) }
                == UnsafeMutableRawPointer(mutexAddress),
            "the mutex is not the object's first stored property")
        PThreadMutex.initialize(at: mutexAddress)
    }

    deinit {
        pthread_mutex_destroy(mutexAddress)
    }

    /// The mutex: the first stored property, right after the object's header.
    @inline(__always)
    private final var mutexAddress: UnsafeMutablePointer<pthread_mutex_t> {
        _getUnsafePointerToStoredProperties(self).assumingMemoryBound(to: pthread_mutex_t.self)
    }

    /// Runs `body` with the mutex held.
    @inline(__always)
    final func withMutex<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        PThreadMutex.lock(at: mutexAddress)
        defer { PThreadMutex.unlock(at: mutexAddress) }
        return try body()
    }
}
