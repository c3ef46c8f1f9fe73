import Metrics
import RingPort
import Synchronization

/// The counters of a ``TCPServer``, kept in atomics on the hot path and exported to swift-metrics
/// by ``export()`` (the server calls it periodically and at shutdown); and the connection-duration
/// timer, recorded as each connection closes.
///
/// Thread-safety: every method may be called from any thread.
final class ServerCounters: Sendable {
    let accepted = Atomic<Int>(0)
    let refused = Atomic<Int>(0)
    let closed = Atomic<Int>(0)
    /// Bytes received and sent: added to on every message with `wrappingAdd`, one locked add,
    /// where `add` loads the value and loops on a compare-and-swap to check for an overflow that
    /// 2^63 bytes would take nearly three years at 100 GB/s to reach.
    let bytesReceived = Atomic<Int>(0)
    let bytesSent = Atomic<Int>(0)
    let idleTimeouts = Atomic<Int>(0)
    let acceptErrors = Atomic<Int>(0)
    let connectionErrors = Atomic<Int>(0)
    let protocolErrors = Atomic<Int>(0)
    let backpressurePauses = Atomic<Int>(0)
    let bufferExhaustions = Atomic<Int>(0)

    private let exporter: MetricsExporter
    /// How long connections stayed open, recorded as each one closes (swift-metrics `Timer`).
    private let connectionDuration: Metrics.Timer

    init(label: String) {
        exporter = MetricsExporter(label: label)
        connectionDuration = Metrics.Timer(label: "ringport_connection_duration", dimensions: [("server", label)])
    }

    /// A connection closed after being open for `duration`.
    func connectionClosed(after duration: Duration) {
        connectionDuration.recordNanoseconds(Int64(clamping: duration.nanosecondsClamped))
    }

    /// A snapshot.
    func snapshot() -> TCPServer.Statistics {
        let accepted = accepted.load(ordering: .relaxed)
        let closed = closed.load(ordering: .relaxed)
        return TCPServer.Statistics(
            accepted: accepted,
            refused: refused.load(ordering: .relaxed),
            open: accepted - closed,
            closed: closed,
            bytesReceived: bytesReceived.load(ordering: .relaxed),
            bytesSent: bytesSent.load(ordering: .relaxed),
            idleTimeouts: idleTimeouts.load(ordering: .relaxed),
            acceptErrors: acceptErrors.load(ordering: .relaxed),
            connectionErrors: connectionErrors.load(ordering: .relaxed),
            protocolErrors: protocolErrors.load(ordering: .relaxed),
            backpressurePauses: backpressurePauses.load(ordering: .relaxed),
            bufferExhaustions: bufferExhaustions.load(ordering: .relaxed))
    }

    /// Reports what changed since the last export to the metrics backend.
    func export(port: CompletionPort.Statistics) {
        exporter.export(snapshot(), port: port)
    }
}

/// Pushes counter deltas and gauges to swift-metrics. Serialised by its own lock.
private final class MetricsExporter: Sendable {
    private struct Instruments: Sendable {
        let accepted: Counter
        let refused: Counter
        let closed: Counter
        let bytesReceived: Counter
        let bytesSent: Counter
        let idleTimeouts: Counter
        let acceptErrors: Counter
        let connectionErrors: Counter
        let protocolErrors: Counter
        let backpressurePauses: Counter
        let bufferExhaustions: Counter
        let operationsSubmitted: Counter
        let operationsCompleted: Counter
        let open: Gauge
        let operationsInFlight: Gauge
    }

    private let instruments: Instruments
    private let last = LockedValue((TCPServer.Statistics(), CompletionPort.Statistics()))

    init(label: String) {
        let dimensions = [("server", label)]
        func counter(_ name: String, _ extra: [(String, String)] = []) -> Counter {
            Counter(label: "ringport_\(name)", dimensions: dimensions + extra)
        }
        instruments = Instruments(
            accepted: counter("connections_accepted_total"),
            refused: counter("connections_refused_total"),
            closed: counter("connections_closed_total"),
            bytesReceived: counter("bytes_received_total"),
            bytesSent: counter("bytes_sent_total"),
            idleTimeouts: counter("idle_timeouts_total"),
            acceptErrors: counter("errors_total", [("kind", "accept")]),
            connectionErrors: counter("errors_total", [("kind", "connection")]),
            protocolErrors: counter("errors_total", [("kind", "protocol")]),
            backpressurePauses: counter("backpressure_pauses_total"),
            bufferExhaustions: counter("receive_buffer_exhaustions_total"),
            operationsSubmitted: counter("operations_submitted_total"),
            operationsCompleted: counter("operations_completed_total"),
            open: Gauge(label: "ringport_connections_open", dimensions: dimensions),
            operationsInFlight: Gauge(label: "ringport_operations_in_flight", dimensions: dimensions))
    }

    func export(_ now: TCPServer.Statistics, port: CompletionPort.Statistics) {
        last.withLock { previous in
            func delta(_ counter: Counter, _ current: Int, _ before: Int) {
                if current > before { counter.increment(by: Int64(current - before)) }
            }
            let (then, portThen) = previous
            delta(instruments.accepted, now.accepted, then.accepted)
            delta(instruments.refused, now.refused, then.refused)
            delta(instruments.closed, now.closed, then.closed)
            delta(instruments.bytesReceived, now.bytesReceived, then.bytesReceived)
            delta(instruments.bytesSent, now.bytesSent, then.bytesSent)
            delta(instruments.idleTimeouts, now.idleTimeouts, then.idleTimeouts)
            delta(instruments.acceptErrors, now.acceptErrors, then.acceptErrors)
            delta(instruments.connectionErrors, now.connectionErrors, then.connectionErrors)
            delta(instruments.protocolErrors, now.protocolErrors, then.protocolErrors)
            delta(instruments.backpressurePauses, now.backpressurePauses, then.backpressurePauses)
            delta(instruments.bufferExhaustions, now.bufferExhaustions, then.bufferExhaustions)
            delta(instruments.operationsSubmitted, Int(port.submittedOperations), Int(portThen.submittedOperations))
            delta(instruments.operationsCompleted, Int(port.completedOperations), Int(portThen.completedOperations))
            instruments.open.record(now.open)
            instruments.operationsInFlight.record(port.operationsInFlight)
            previous = (now, port)
        }
    }
}
