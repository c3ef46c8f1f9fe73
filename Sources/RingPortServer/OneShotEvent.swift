import RingPort

/// Something that happens once (a server stopped), which tasks can wait for.
///
/// Thread-safety: all methods may be called from any thread or task. ``signal()`` resumes every
/// task waiting in ``wait()``; a ``wait()`` after it returns at once.
final class OneShotEvent: Sendable {
    private struct State {
        var happened = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = LockedValue(State())

    /// Records that the event happened and resumes the waiting tasks. Later calls do nothing.
    func signal() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            if state.happened { return [] }
            state.happened = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Whether ``signal()`` was called.
    var hasHappened: Bool {
        state.withLock { $0.happened }
    }

    /// Suspends until ``signal()`` is called (returns at once if it was). Not cancellable: the
    /// caller makes sure the event happens.
    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { state -> Bool in
                if state.happened { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }
}
