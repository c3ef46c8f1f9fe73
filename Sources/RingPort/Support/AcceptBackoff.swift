import Glibc
import Synchronization
import SystemPackage

/// What a listener does after an accept fails: the one accept back-off of the package, for the
/// server's accepts and the async listener alike.
///
/// - An error of the connection, not of the listener (`ECONNABORTED`: the peer reset it while it
///   waited in the backlog; `EINTR`; `EPERM` from a firewall rule; and the network errors Linux
///   passes on from the new socket, which accept(2) says to treat as `EAGAIN`: `EPROTO`,
///   `ENETDOWN`, `ENOPROTOOPT`, `EHOSTDOWN`, `ENONET`, `EHOSTUNREACH`, `EOPNOTSUPP`,
///   `ENETUNREACH`): accept again at once.
/// - Anything else (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, ...): wait, 10 ms doubling to 1 s,
///   then accept again, instead of spinning on a listener that keeps failing. Connections wait
///   in the listen backlog meanwhile.
///
/// One back-off step per *episode step*, not per failed accept: accepts that fail while a delay
/// is running (a pool of 16 pre-posted accepts failing on one `EMFILE`) get what is left of that
/// delay instead of doubling it each. A successful accept ends the episode.
///
/// Thread-safety: every method may be called from any thread (a small lock; accepts failing
/// are the rare path).
package final class AcceptBackoff: Sendable {
    /// The first delay of an episode.
    package static let initialDelay: Duration = .milliseconds(10)
    /// The longest delay.
    package static let maximumDelay: Duration = .seconds(1)

    private struct Episode {
        /// The current step's delay, nil outside an episode.
        var delay: Duration?
        /// When the current step's delay ends.
        var until = MonotonicInstant(nanoseconds: 0)
    }

    private let episode = Mutex(Episode())
    /// Whether an episode is on: lets ``succeeded()`` skip the lock on every accepted connection.
    private let failing = Atomic<Bool>(false)

    package init() {}

    /// Whether `error` ended one connection only, so the listener can accept again at once.
    package static func isConnectionError(_ error: Errno) -> Bool {
        switch error.rawValue {
        case ECONNABORTED, EINTR, EPERM, EPROTO, ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP,
            ENETUNREACH:
            true
        default:
            false
        }
    }

    /// How long to wait before accepting again after `error`: nil to accept again at once (an
    /// error of that connection only), else the delay. The first failure of an episode (or the
    /// first after the previous delay ended) starts the next step, doubling the delay; failures
    /// during a step wait for the rest of it. `started` tells whether this call began the
    /// episode (for logging it once).
    package func delay(after error: Errno, now: MonotonicInstant = .now) -> (delay: Duration, started: Bool)? {
        if AcceptBackoff.isConnectionError(error) { return nil }
        return episode.withLock { episode in
            if episode.delay != nil, now < episode.until {
                return (.nanoseconds(Int64(now.nanoseconds(until: episode.until))), false)
            }
            let started = episode.delay == nil
            if started { failing.store(true, ordering: .relaxed) }
            let next = episode.delay.map { min($0 * 2, AcceptBackoff.maximumDelay) } ?? AcceptBackoff.initialDelay
            episode.delay = next
            episode.until = now.advanced(by: next)
            return (next, started)
        }
    }

    /// An accept succeeded: the episode (if any) is over. Returns whether one was.
    @discardableResult
    package func succeeded() -> Bool {
        guard failing.load(ordering: .relaxed) else { return false }
        failing.store(false, ordering: .relaxed)
        return episode.withLock { episode in
            defer { episode.delay = nil }
            return episode.delay != nil
        }
    }
}
