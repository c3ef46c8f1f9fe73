import DequeModule

import struct NIOCore.ByteBuffer

/// The byte buffers a connection's sending side (``ConnectionStreams``) has queued and not sent
/// yet, in order.
///
/// The first buffer is stored inline and the rest in a deque that is allocated only when a
/// second buffer is queued: a connection that writes one buffer at a time (an echo, a
/// request-response protocol) never allocates one, and an idle connection holds none.
///
/// A random-access collection of its buffers (index 0 is the oldest), so that a gathered send
/// can read the first few without copying them out.
struct SendQueue: RandomAccessCollection {
    private var head: ByteBuffer?
    private var tail = Deque<ByteBuffer>()
    /// Kept apart, so that counting does not touch (and copy) the head buffer. Four bytes, last:
    /// a connection's sending state keeps its single-byte fields in the four after it. The
    /// queue holds far fewer buffers than that counts (the outbound high watermark bounds the
    /// bytes queued, and every buffer takes memory of its own).
    private var storedCount: UInt32 = 0

    var count: Int { Int(storedCount) }
    var startIndex: Int { 0 }
    var endIndex: Int { count }
    var isEmpty: Bool { storedCount == 0 }

    subscript(position: Int) -> ByteBuffer {
        // Borrowed, not copied: reading a queued buffer's bytes costs no retain.
        _read {
            if position == 0 {
                yield head!
            } else {
                yield tail[position - 1]
            }
        }
    }

    /// The readable bytes of the oldest buffer (the queue must not be empty), valid while that
    /// buffer stays queued unchanged. Read in place: through the subscript, the buffer's storage
    /// was retained and released.
    var firstReadableBytes: UnsafeRawBufferPointer {
        head.unsafelyUnwrapped.withUnsafeReadableBytes { $0 }
    }

    /// Queues `buffer` last.
    mutating func append(_ buffer: consuming ByteBuffer) {
        storedCount += 1
        if storedCount == 1 {
            head = buffer
        } else {
            tail.append(buffer)
        }
    }

    /// Queues `buffer` first (the unsent rest of a partly sent buffer).
    mutating func prepend(_ buffer: consuming ByteBuffer) {
        storedCount += 1
        if let previous = head.take() { tail.prepend(previous) }
        head = buffer
    }

    /// Removes and returns the oldest buffer.
    mutating func popFirst() -> ByteBuffer? {
        guard let first = head.take() else { return nil }
        storedCount -= 1
        if storedCount > 0 { head = tail.popFirst() }
        return first
    }

    /// Drops every buffer, and the deque's storage.
    mutating func removeAll() {
        head = nil
        tail = Deque()
        storedCount = 0
    }
}
