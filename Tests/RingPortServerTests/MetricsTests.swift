import CoreMetrics
import Foundation
import Metrics
import RingPort
import RingPortServer
import RingPortTestSupport
import Testing

/// A swift-metrics backend that remembers counter totals and the last gauge values by label.
final class RecordingMetrics: MetricsFactory, @unchecked Sendable {
    // @unchecked: `values` is only touched with `lock` held.
    private let lock = NSLock()
    private var values: [String: Double] = [:]

    func value(_ label: String, _ dimensions: [(String, String)]) -> Double {
        lock.withLock { values[Self.key(label, dimensions)] ?? 0 }
    }

    fileprivate func add(_ key: String, _ amount: Double) { lock.withLock { values[key, default: 0] += amount } }
    fileprivate func set(_ key: String, _ value: Double) { lock.withLock { values[key] = value } }

    static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        ([label] + dimensions.map { "\($0.0)=\($0.1)" }).joined(separator: ",")
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        RecordingCounter(key: Self.key(label, dimensions), metrics: self)
    }
    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        RecordingCounter(key: Self.key(label, dimensions), metrics: self)
    }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        RecordingGauge(key: Self.key(label, dimensions), metrics: self)
    }
    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        RecordingGauge(key: Self.key(label, dimensions), metrics: self)
    }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        RecordingGauge(key: Self.key(label, dimensions), metrics: self)
    }
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyMeter(_ handler: any MeterHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
}

private final class RecordingCounter: CounterHandler, FloatingPointCounterHandler, Sendable {
    let key: String
    let metrics: RecordingMetrics
    init(key: String, metrics: RecordingMetrics) { self.key = key; self.metrics = metrics }
    func increment(by amount: Int64) { metrics.add(key, Double(amount)) }
    func increment(by amount: Double) { metrics.add(key, amount) }
    func reset() { metrics.set(key, 0) }
}

private final class RecordingGauge: RecorderHandler, MeterHandler, TimerHandler, Sendable {
    let key: String
    let metrics: RecordingMetrics
    init(key: String, metrics: RecordingMetrics) { self.key = key; self.metrics = metrics }
    func record(_ value: Int64) { metrics.set(key, Double(value)) }
    func record(_ value: Double) { metrics.set(key, value) }
    func set(_ value: Int64) { metrics.set(key, Double(value)) }
    func set(_ value: Double) { metrics.set(key, value) }
    func increment(by amount: Double) { metrics.add(key, amount) }
    func decrement(by amount: Double) { metrics.add(key, -amount) }
    func recordNanoseconds(_ duration: Int64) { metrics.set(key, Double(duration)) }
}

extension RingPortServerTests {
    @Suite struct MetricsTests {
        /// The only test that bootstraps the process-wide metrics system.
        @Test func countersReachSwiftMetrics() throws {
            let metrics = RecordingMetrics()
            MetricsSystem.bootstrap(metrics)
            let server = dimensions("metrics-test")
            try withServer(configure: {
                $0.label = "metrics-test"
                $0.maximumConnections = 3
            }) { tcpServer in
                let clients = try (0..<3).map { _ in try BlockingClient(connectingTo: tcpServer.localAddress) }
                for client in clients {
                    try client.send(Array("0123456789".utf8))
                    #expect(try client.receive(count: 10).count == 10)
                }
                let refused = try BlockingClient(connectingTo: tcpServer.localAddress)
                #expect((try? refused.receive(count: 1)) ?? [] == [])
                refused.close()
                clients.forEach { $0.close() }
                #expect(eventually { tcpServer.statistics.open == 0 && tcpServer.statistics.refused == 1 })
            }
            // The shutdown exported the final values.
            #expect(metrics.value("ringport_connections_accepted_total", server) == 3)
            #expect(metrics.value("ringport_connections_refused_total", server) == 1)
            #expect(metrics.value("ringport_connections_closed_total", server) == 3)
            #expect(metrics.value("ringport_bytes_received_total", server) == 30)
            #expect(metrics.value("ringport_bytes_sent_total", server) == 30)
            #expect(metrics.value("ringport_connections_open", server) == 0)
            #expect(metrics.value("ringport_operations_submitted_total", server) > 0)
            // The connection-duration timer recorded the connections as they closed.
            #expect(metrics.value("ringport_connection_duration", server) > 0)
        }

        private func dimensions(_ label: String) -> [(String, String)] {
            [("server", label)]
        }
    }
}
