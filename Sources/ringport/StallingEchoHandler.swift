import Glibc
import RingPort
import RingPortServer
import Synchronization

/// The echo handler, except that `count` receives, from `after` on, block their handler for a
/// while (asleep): each makes a standby take the ring over. For measuring what a takeover leaves
/// behind (`ringport echo --stall-after S`), never for serving.
///
/// Thread-safety: the counter is atomic; the rest is immutable.
final class StallingEchoHandler: ConnectionHandler {
    private let remaining: Atomic<Int>
    private let from: MonotonicInstant
    private let stall: useconds_t

    init(count: Int, after: Duration, stall: Duration) {
        remaining = Atomic(count)
        from = MonotonicInstant.now.advanced(by: after)
        self.stall = useconds_t(clamping: stall.nanosecondsClamped / 1_000)
    }

    func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        if remaining.load(ordering: .relaxed) > 0 && MonotonicInstant.coarseNow >= from
            && remaining.subtract(1, ordering: .relaxed).oldValue > 0
        {
            usleep(stall)
        }
        connection.write(bytes)
    }
}
