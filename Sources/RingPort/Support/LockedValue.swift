/// A value guarded by a pthread mutex.
///
/// Used instead of `Synchronization.Mutex` because ThreadSanitizer understands pthread
/// mutexes, and RingPort's test suite runs under it.
///
/// Thread-safety: ``withLock(_:)`` may be called from any thread.
///
/// `package`: shared with the package's other modules, not part of RingPort's public API.
package final class LockedValue<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched inside `lock`, which also makes Swift's dynamic
    // exclusivity check on it redundant (@exclusivity(unchecked)).
    private let lock = ConditionMutex()
    @exclusivity(unchecked) private var value: Value

    package init(_ value: Value) {
        self.value = value
    }

    /// Runs `body` with exclusive access to the value.
    package func withLock<Result, Failure: Error>(
        _ body: (inout Value) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
