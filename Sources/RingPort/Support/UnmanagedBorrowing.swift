extension Unmanaged {
    /// Calls `body` with the object, borrowed: no reference count changes hands. The caller
    /// guarantees that something else keeps the object alive meanwhile (the in-flight table, a
    /// connection's write queue, the port's list of rings). `_withUnsafeGuaranteedRef`, with the
    /// error type kept.
    @inlinable @inline(__always)
    package func withBorrowedInstance<Result, Failure: Error>(
        _ body: (Instance) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        let outcome = _withUnsafeGuaranteedRef { instance -> Swift.Result<Result, Failure> in
            do throws(Failure) {
                return .success(try body(instance))
            } catch {
                return .failure(error)
            }
        }
        return try outcome.get()
    }
}
