import RingPort

/// Where one load connection stands in its byte stream.
///
/// Messages are numbered 0, 1, 2, ...; a position is (sequence, offset). Three positions move
/// forward: *acknowledged* (bytes the kernel accepted, from send completions), *posted*
/// (acknowledged plus the send in flight) and *received* (bytes echoed and checked). Bytes of
/// message `sequence` may be sent only while `sequence < receivedSequence + depth`: a message is
/// in flight from its first byte sent to its last byte received, as in echo_load.
struct LoadConnection {
    var acknowledgedSequence: UInt64 = 0
    var acknowledgedOffset = 0
    var postedSequence: UInt64 = 0
    var postedOffset = 0
    var receivedSequence: UInt64 = 0
    var receivedOffset = 0
    /// Messages whose first byte went out in the send posted last: their send time is
    /// stamped when the worker next submits (see ``LoadWorker``).
    var stampFrom: UInt64 = 0
    var stampTo: UInt64 = 0
    /// Connected and not failed.
    var isOpen = false
    /// A send is in flight (one at a time per connection: its context is the send buffer).
    var isSending = false
    /// The message being received was already counted as corrupted.
    var isCorrupt = false
}

/// The state of every load connection: its ``LoadConnection``, the send times of its messages in
/// flight, and its two per-I/O contexts (send and receive buffers).
///
/// ## Ownership and threads
/// Created on the main thread before any load thread starts; the memory is allocated in `init`
/// and freed in `deinit`, and lives as long as the generator and its workers hold the table.
/// Connection `i`'s entries are touched only while handling a completion of connection `i`'s
/// handle (or, before the run starts, by the main thread). The completion port never hands two
/// completions of one handle to two threads at once, and its ring lock orders the hand-over, so
/// the entries need no lock of their own; hence `@unchecked Sendable`.
///
/// The contexts carry the connection's index in ``IOContext/userValue``, so a completion leads
/// straight to its entry. They belong to the port while an operation is posted with them and to
/// the worker handling the connection otherwise (see ``IOContext``).
final class LoadConnections: @unchecked Sendable {
    /// The number of connections.
    let count: Int
    /// Messages in flight per connection: the number of send-time slots per connection.
    let depth: Int
    /// `count` connection states.
    let states: UnsafeMutablePointer<LoadConnection>
    /// `count × depth` send times (monotonic nanoseconds): message `s` of connection `i` at
    /// `i × depth + s % depth`.
    let sendTimes: UnsafeMutablePointer<UInt64>
    /// The send buffer of each connection.
    let sendContexts: ContiguousArray<IOContext>
    /// The receive context of each connection (also the context of its connect); its buffer is
    /// empty with multishot receives.
    let receiveContexts: ContiguousArray<IOContext>

    /// Allocates `count` connections with `depth` send-time slots, send buffers of
    /// `sendBufferSize` bytes and receive buffers of `receiveBufferSize` bytes (0 when the
    /// connections receive into the port's provided buffers).
    init(count: Int, depth: Int, sendBufferSize: Int, receiveBufferSize: Int) {
        self.count = count
        self.depth = depth
        states = .allocate(capacity: count)
        states.initialize(repeating: LoadConnection(), count: count)
        sendTimes = .allocate(capacity: count * depth)
        sendTimes.initialize(repeating: 0, count: count * depth)
        var sends = ContiguousArray<IOContext>()
        var receives = ContiguousArray<IOContext>()
        sends.reserveCapacity(count)
        receives.reserveCapacity(count)
        for index in 0..<count {
            let send = IOContext(capacity: sendBufferSize)
            send.userValue = UInt64(index)
            sends.append(send)
            let receive = IOContext(capacity: receiveBufferSize)
            receive.userValue = UInt64(index)
            receives.append(receive)
        }
        sendContexts = sends
        receiveContexts = receives
    }

    deinit {
        states.deinitialize(count: count)
        states.deallocate()
        sendTimes.deallocate()
    }
}
