import RingPort

/// The result of one `ringport load` run, and its two printed forms: one JSON line with the keys
/// of `Benchmarks/c/echo_load.c` (plus a few of its own), or a readable report.
///
/// A value built by the main thread from the merged ``LoadTally`` of the workers.
package struct LoadReport: Sendable {
    let plan: LoadPlan
    package let tally: LoadTally
    /// The measured window, in seconds: the planned duration, or less when every connection
    /// failed before its end.
    let measuredSeconds: Double
    /// Process CPU seconds (user + system, every thread) spent during the measured window, when
    /// sampled.
    let clientCPUSeconds: Double?

    /// A report of `tally` over `measuredNanoseconds`.
    init(plan: LoadPlan, tally: LoadTally, measuredNanoseconds: UInt64, clientCPUSeconds: Double?) {
        self.plan = plan
        self.tally = tally
        measuredSeconds = Double(measuredNanoseconds) / 1e9
        self.clientCPUSeconds = clientCPUSeconds
    }

    /// Messages completed inside the measured window per second.
    var messagesPerSecond: Double {
        measuredSeconds > 0 ? Double(tally.measuredMessages) / measuredSeconds : 0
    }

    /// Echoed payload in one direction, in 10^6 bytes per second.
    var megabytesPerSecond: Double {
        messagesPerSecond * Double(plan.messageSize) / 1e6
    }

    /// The latency at `percentile` (0...100) in microseconds; 0 when nothing was measured.
    func latencyMicroseconds(atPercentile percentile: Double) -> Double {
        tally.measuredMessages == 0 ? 0 : Double(tally.latencies.valueAtPercentile(percentile)) / 1e3
    }

    /// The largest latency in microseconds (exact, not rounded to a histogram bucket).
    var maximumLatencyMicroseconds: Double {
        tally.measuredMessages == 0 ? 0 : Double(tally.latencies.maxRecorded) / 1e3
    }

    /// The load generator's CPU microseconds per measured message, when known.
    var clientCPUMicrosecondsPerMessage: Double? {
        guard let clientCPUSeconds, tally.measuredMessages > 0 else { return nil }
        return clientCPUSeconds * 1e6 / Double(tally.measuredMessages)
    }

    /// The process exit status echo_load uses: 2 when any error was counted, else 0.
    package var exitStatus: Int32 {
        tally.errors > 0 ? 2 : 0
    }

    // MARK: Output

    /// One JSON object on one line. The first thirteen keys, their order and their number
    /// formats are echo_load's (`Benchmarks/scripts/compare-echo.sh` reads them); the rest are
    /// this tool's own.
    package var json: String {
        var fields: [(String, String)] = [
            ("msgs/s", Self.fixed(messagesPerSecond, decimals: 1)),
            ("MB/s", Self.fixed(megabytesPerSecond, decimals: 3)),
            ("p50_us", Self.fixed(latencyMicroseconds(atPercentile: 50), decimals: 1)),
            ("p90_us", Self.fixed(latencyMicroseconds(atPercentile: 90), decimals: 1)),
            ("p99_us", Self.fixed(latencyMicroseconds(atPercentile: 99), decimals: 1)),
            ("p999_us", Self.fixed(latencyMicroseconds(atPercentile: 99.9), decimals: 1)),
            ("max_us", Self.fixed(maximumLatencyMicroseconds, decimals: 1)),
            ("errors", "\(tally.errors)"),
            ("msgs", "\(tally.measuredMessages)"),
            ("connections", "\(plan.connections)"),
            ("size", "\(plan.messageSize)"),
            ("depth", "\(plan.depth)"),
            ("duration_s", Self.fixed(measuredSeconds, decimals: 3)),
            ("warmup_s", Self.fixed(Double(plan.warmup.nanosecondsClamped) / 1e9, decimals: 3)),
            ("workers", "\(plan.workers)"),
            ("receive", "\"\(plan.receiveMode.rawValue)\""),
            ("corrupted_msgs", "\(tally.corruptedMessages)"),
            ("mismatched_bytes", "\(tally.mismatchedBytes)"),
            ("premature_closes", "\(tally.prematureCloses)"),
            ("socket_errors", "\(tally.socketErrors)"),
            ("unsolicited_data", "\(tally.unsolicitedData)"),
            ("buffer_exhaustions", "\(tally.bufferExhaustions)"),
        ]
        if let clientCPUSeconds {
            fields.append(("client_cpu_s", Self.fixed(clientCPUSeconds, decimals: 3)))
        }
        if let perMessage = clientCPUMicrosecondsPerMessage {
            fields.append(("client_cpu_us_per_msg", Self.fixed(perMessage, decimals: 3)))
        }
        return "{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}"
    }

    /// The readable report, several lines.
    package var text: String {
        let warmup = Double(plan.warmup.nanosecondsClamped) / 1e9
        var lines = [
            "ringport load: \(plan.address), \(Self.grouped(Double(plan.connections), decimals: 0)) connections,"
                + " \(plan.messageSize)-byte messages, \(plan.depth) in flight per connection,"
                + " \(plan.workers) \(plan.workers == 1 ? "worker" : "workers"), \(plan.receiveMode.rawValue) receive",
            """
              measured    \(Self.fixed(measuredSeconds, decimals: 3)) s after \(Self.fixed(warmup, decimals: 3)) \
            s of warm-up
            """,
            "  messages    \(Self.grouped(Double(tally.measuredMessages), decimals: 0))"
                + " (\(Self.grouped(messagesPerSecond, decimals: 1)) msgs/s,"
                + " \(Self.fixed(megabytesPerSecond, decimals: 3)) MB/s of payload each way)",
        ]
        let percentiles = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)].map { name, value in
            "\(name) \(Self.grouped(latencyMicroseconds(atPercentile: value), decimals: 1))"
        }
        lines.append(
            "  latency µs  " + percentiles.joined(separator: "  ")
                + "  max \(Self.grouped(maximumLatencyMicroseconds, decimals: 1))")
        var errors = "  errors      \(tally.errors)"
        if tally.errors > 0 {
            errors +=
                " (\(tally.corruptedMessages) corrupted messages with \(tally.mismatchedBytes) mismatched bytes,"
                + " \(tally.prematureCloses) premature closes, \(tally.socketErrors) socket errors,"
                + " \(tally.unsolicitedData) with unsolicited data)"
        }
        lines.append(errors)
        if let clientCPUSeconds, let perMessage = clientCPUMicrosecondsPerMessage {
            lines.append(
                """
                  client CPU  \(Self.fixed(clientCPUSeconds, decimals: 3)) s, \
                \(Self.fixed(perMessage, decimals: 3)) µs per message
                """
            )
        }
        return lines.joined(separator: "\n")
    }

    // MARK: Number formatting (no Foundation)

    /// `value` with exactly `decimals` digits after the point ("%.Nf"); 0 for NaN and infinities.
    package static func fixed(_ value: Double, decimals: Int) -> String {
        guard value.isFinite else { return decimals > 0 ? "0." + String(repeating: "0", count: decimals) : "0" }
        var scale: Double = 1
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9e18 else { return "\(value)" }
        let units = UInt64(scaled)
        let factor = UInt64(scale)
        let sign = value < 0 && units > 0 ? "-" : ""
        guard decimals > 0 else { return sign + "\(units)" }
        let fraction = String(units % factor)
        return sign + "\(units / factor)." + String(repeating: "0", count: decimals - fraction.count) + fraction
    }

    /// Like ``fixed(_:decimals:)`` with the integer part grouped by thousands ("1,234,567.8").
    static func grouped(_ value: Double, decimals: Int) -> String {
        let plain = fixed(value, decimals: decimals)
        let sign = plain.hasPrefix("-") ? "-" : ""
        let unsigned = plain.dropFirst(sign.count)
        let integer = unsigned.prefix { $0 != "." }
        let rest = unsigned.dropFirst(integer.count)
        var groupedInteger = ""
        for (position, digit) in integer.enumerated() {
            if position > 0 && (integer.count - position) % 3 == 0 { groupedInteger.append(",") }
            groupedInteger.append(digit)
        }
        return sign + groupedInteger + rest
    }
}
