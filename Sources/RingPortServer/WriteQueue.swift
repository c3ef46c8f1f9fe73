import DequeModule
import RingPort

/// A connection's bytes waiting to be sent, in order: each entry is bytes copied into a pooled
/// context, a provided buffer received on the connection and sent back as is, or the
/// application's own context.
///
/// ## Ownership
/// The queue owns each entry's context — a pooled chunk, or the application's context — from
/// the moment the entry is appended until it leaves the queue (``removeFirst()``, ``removeAll()``),
/// which hands the context on. It holds it as an unmanaged, retained reference: entries are
/// plain values, so appending, reading and moving them costs no reference counting (a
/// connection's write path runs for every message). A provided buffer stays the connection's to
/// release.
///
/// Where the next bytes to send start is kept here (``Entry/start``), not in the context: the
/// context's own bookkeeping (`IOContext.count`, `offset`) is left alone.
///
/// The first entry is stored inline (in the connection), the rest in a deque: most connections
/// have at most one entry queued, and at 1,000 connections the deque's separate storage was a
/// cache miss on every send completion (1.5% of the echo server's CPU).
///
/// Thread-safety: none; confined, like its connection, to the connection's completions.
struct WriteQueue {
    /// One entry.
    struct Entry {
        enum Source {
            /// Bytes copied into a pooled chunk (`end` of its capacity filled so far).
            case copied
            /// A provided buffer received on this connection.
            case provided
            /// The application's own context (a range of it).
            case owned
        }

        var source: Source
        /// The chunk or the application's context (not for `provided`), retained by the queue.
        var context: Unmanaged<IOContext>?
        /// The provided buffer (for `provided`).
        var buffer: ReceivedBuffer?
        /// The next byte to send.
        var start: Int
        /// The end of the bytes to send.
        var end: Int

        var remaining: Int { end - start }
    }

    /// The entry to send next; nil when the queue is empty.
    private(set) var first: Entry?
    /// The entries after ``first`` (empty while ``first`` is nil).
    private var rest = Deque<Entry>()

    var isEmpty: Bool { first == nil }

    private mutating func append(_ entry: Entry) {
        if first == nil {
            first = entry
        } else {
            rest.append(entry)
        }
    }

    /// Appends bytes copied into `chunk` (which the queue now owns), `end` of them filled.
    mutating func appendCopied(_ chunk: consuming IOContext, filled end: Int) {
        // The caller's reference becomes the entry's: retained and released back to back, a pair
        // the optimiser removes (released after the append, it was a retain and a release per
        // chunk).
        let context = Unmanaged.passRetained(consume chunk)
        append(Entry(source: .copied, context: context, buffer: nil, start: 0, end: end))
    }

    /// Appends a provided buffer to send back whole.
    mutating func appendProvided(_ buffer: ReceivedBuffer) {
        append(Entry(source: .provided, context: nil, buffer: buffer, start: 0, end: buffer.count))
    }

    /// Appends `range` of the application's `context` (which the queue holds until the entry
    /// leaves it).
    mutating func appendOwned(_ context: IOContext, range: Range<Int>) {
        append(
            Entry(
                source: .owned, context: Unmanaged.passRetained(context), buffer: nil, start: range.lowerBound,
                end: range.upperBound))
    }

    /// Copies as many bytes of `bytes` as fit into the last entry, when it is a copied chunk that
    /// may still grow (`capacity` bytes in all, and not the one being sent when `sending`).
    /// Returns how many were copied.
    mutating func appendToLastChunk(_ bytes: UnsafeRawBufferPointer, capacity: Int, sending: Bool) -> Int {
        if rest.isEmpty {
            // The last entry is the first: not while it is being sent.
            guard !sending, first != nil else { return 0 }
            return Self.append(bytes, toChunk: &first!, capacity: capacity)
        }
        return Self.append(bytes, toChunk: &rest[rest.count - 1], capacity: capacity)
    }

    /// Copies what fits of `bytes` into `entry` when it is a copied chunk not full yet.
    private static func append(_ bytes: UnsafeRawBufferPointer, toChunk entry: inout Entry, capacity: Int) -> Int {
        guard entry.source == .copied, entry.end < capacity, let chunk = entry.context else { return 0 }
        let count = min(bytes.count, capacity - entry.end)
        let destination = chunk._withUnsafeGuaranteedRef { $0.unsafeBytes }
        (destination + entry.end).copyMemory(from: bytes.baseAddress!, byteCount: count)
        entry.end += count
        return count
    }

    /// `count` bytes of the first entry were sent. Returns whether that was the rest of it:
    /// then the entry is left as it was, for ``removeFirst()`` next (which copies it whole, and
    /// a copy right after a store to `start` waited for that store to reach the cache: a
    /// store-forwarding stall, two thirds of the connection's removal of a sent entry).
    mutating func advanceFirst(by count: Int) -> Bool {
        if first!.remaining == count { return true }
        first!.start += count
        return false
    }

    /// Removes the first entry and hands it over: the caller owns its context's reference (take
    /// it with `takeRetainedValue()`) or its provided buffer.
    mutating func removeFirst() -> Entry {
        let entry = first!
        first = rest.popFirst()
        return entry
    }
}
