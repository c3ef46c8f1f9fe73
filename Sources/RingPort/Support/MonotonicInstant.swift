import Glibc

/// A point on the monotonic clock (`CLOCK_MONOTONIC`), in nanoseconds.
///
/// Cheaper than `ContinuousClock.now` on the hot path (one vDSO call, no conversions) and
/// directly usable for `pthread_cond_timedwait` and io_uring timeouts.
///
/// `package`: shared with the package's other modules, not part of RingPort's public API.
package struct MonotonicInstant: Comparable, Sendable {
    package var nanoseconds: UInt64

    package init(nanoseconds: UInt64) {
        self.nanoseconds = nanoseconds
    }

    /// Now (`CLOCK_MONOTONIC`, about 28 ns to read here).
    package static var now: MonotonicInstant {
        read(CLOCK_MONOTONIC)
    }

    /// Now from the coarse clock (`CLOCK_MONOTONIC_COARSE`: about 6 ns to read, but it ticks only
    /// every few milliseconds): for timeouts of seconds read on every message.
    package static var coarseNow: MonotonicInstant {
        read(CLOCK_MONOTONIC_COARSE)
    }

    private static func read(_ clock: clockid_t) -> MonotonicInstant {
        var time = Glibc.timespec()
        clock_gettime(clock, &time)
        return MonotonicInstant(nanoseconds: UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec))
    }

    /// An instant after which nothing waits.
    package static let distantFuture = MonotonicInstant(nanoseconds: UInt64.max / 2)

    package static func < (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Bool {
        lhs.nanoseconds < rhs.nanoseconds
    }

    package func advanced(by duration: Duration) -> MonotonicInstant {
        let (sum, overflow) = nanoseconds.addingReportingOverflow(duration.nanosecondsClamped)
        return overflow || sum > MonotonicInstant.distantFuture.nanoseconds
            ? .distantFuture : MonotonicInstant(nanoseconds: sum)
    }

    /// The time from `self` to `later` (zero when `later` is not later).
    package func duration(to later: MonotonicInstant) -> Duration {
        .nanoseconds(Int64(clamping: nanoseconds(until: later)))
    }

    /// Nanoseconds from `self` until `later`, or 0 when `later` has passed.
    func nanoseconds(until later: MonotonicInstant) -> UInt64 {
        later.nanoseconds > nanoseconds ? later.nanoseconds - nanoseconds : 0
    }

    var absoluteTime: Glibc.timespec {
        Glibc.timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    }
}

extension Duration {
    /// The duration in nanoseconds, clamped to `0...UInt64.max / 2`.
    package var nanosecondsClamped: UInt64 {
        let (seconds, attoseconds) = components
        if seconds < 0 || attoseconds < 0 { return 0 }
        if seconds >= Int64(UInt64.max / 2 / 1_000_000_000) { return UInt64.max / 2 }
        return UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
    }
}
