import Glibc

/// Polls `condition` every `interval` until it holds or `deadline` passes; returns whether it
/// held. The one "wait until idle" of the package: for a shutdown that waits for other threads'
/// work to drain (connections closing, operations completing), where nothing signals the end.
///
/// Blocks the calling thread; never call it from a completion handler or a task on a shared pool.
package func waitUntil(
    _ deadline: MonotonicInstant, pollingEvery interval: Duration = .milliseconds(1), _ condition: () -> Bool
) -> Bool {
    let microseconds = useconds_t(clamping: interval.nanosecondsClamped / 1_000)
    while !condition() {
        if MonotonicInstant.now >= deadline { return false }
        usleep(microseconds)
    }
    return true
}

extension CompletionPort {
    /// Whether no operation is in flight and no completion waits to be dequeued: every
    /// completion of what was posted has been handled.
    package var isIdle: Bool {
        let statistics = statistics
        return statistics.operationsInFlight == 0 && statistics.completionsWaiting == 0
    }
}
