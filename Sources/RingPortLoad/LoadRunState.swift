import RingPort
import Synchronization

/// What the workers of one load run share: how many connections are still open, and how many
/// failures were reported already.
///
/// Atomics only; any thread.
final class LoadRunState: Sendable {
    /// Failures beyond this many are counted but not printed (echo_load prints 10 too).
    static let reportLimit = 10

    /// Connections established and not failed. A worker stops when it reaches 0.
    let openConnections: Atomic<Int>
    private let reportedFailures = Atomic<Int>(0)

    /// The state of a run whose `openConnections` connections are all established.
    init(openConnections: Int) {
        self.openConnections = Atomic(openConnections)
    }

    /// Prints `message` to standard error as `ringport load: <message>`, unless
    /// ``reportLimit`` messages were printed already.
    func report(_ message: @autoclosure () -> String) {
        let previous = reportedFailures.wrappingAdd(1, ordering: .relaxed).oldValue
        if previous < LoadRunState.reportLimit {
            StandardError.write("ringport load: \(message())")
        } else if previous == LoadRunState.reportLimit {
            StandardError.write("ringport load: (further connection failures are counted but not printed)")
        }
    }
}
