import Histogram
import RingPort

/// What one load worker counted: latencies of the measured messages and the errors.
///
/// A value owned by one worker thread while it runs (so recording needs no lock or atomic);
/// the main thread merges the workers' tallies after joining them.
package struct LoadTally: Sendable {
    /// Round-trip times of the messages completed inside the measured window, in nanoseconds
    /// (three significant digits).
    var latencies: Histogram<UInt64>
    /// Messages completed inside the measured window.
    var measuredMessages: UInt64 = 0
    /// Messages completed at any time (for the progress line).
    var completedMessages: UInt64 = 0
    /// Messages with at least one byte that was not what was sent.
    var corruptedMessages: UInt64 = 0
    /// Bytes that were not what was sent.
    package var mismatchedBytes: UInt64 = 0
    /// Connections the server closed while messages were in flight.
    var prematureCloses: UInt64 = 0
    /// Connections that failed with a socket error (reset, broken pipe, ...).
    var socketErrors: UInt64 = 0
    /// Connections on which more bytes arrived than were sent.
    var unsolicitedData: UInt64 = 0
    /// Multishot receives that ended because the ring had no free buffer (posted again; not an
    /// error).
    var bufferExhaustions: UInt64 = 0

    /// An empty tally whose histogram covers latencies up to `highestLatency` nanoseconds
    /// without resizing (it grows if a larger one comes).
    init(highestLatency: UInt64) {
        latencies = Histogram(
            lowestDiscernibleValue: 1, highestTrackableValue: max(highestLatency, 2),
            numberOfSignificantValueDigits: .three)
        latencies.autoResize = true
    }

    /// Errors as echo_load counts them: corrupted messages plus failed connections.
    var errors: UInt64 {
        corruptedMessages + prematureCloses + socketErrors + unsolicitedData
    }

    /// Adds another worker's tally to this one.
    mutating func merge(_ other: LoadTally) {
        latencies.add(other.latencies)
        measuredMessages += other.measuredMessages
        completedMessages += other.completedMessages
        corruptedMessages += other.corruptedMessages
        mismatchedBytes += other.mismatchedBytes
        prematureCloses += other.prematureCloses
        socketErrors += other.socketErrors
        unsolicitedData += other.unsolicitedData
        bufferExhaustions += other.bufferExhaustions
    }
}
