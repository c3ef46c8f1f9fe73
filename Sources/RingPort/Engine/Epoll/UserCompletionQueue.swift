import CLiburing
import DequeModule

/// The completion queue of an ``EpollRing``: io_uring's CQ ring, in user space.
///
/// A fixed ring of `capacity` CQEs (a power of two) and, beyond it, an overflow list, as the
/// kernel keeps one: a completion is never dropped. Any thread posts (the thread performing the
/// ring's operations, the file operation pool); the ring's reaper peeks and advances.
///
/// ## Threads
/// Head, tail and the overflow list are guarded by `lock`. The reaper reads the CQEs it peeked
/// without the lock: posting writes only slots past the tail, never the ones between the head
/// and the tail, and the reaper returns them with ``advance(by:)``.
///
/// Ownership: the slots are allocated here and freed in `deinit`.
final class UserCompletionQueue: @unchecked Sendable {
    // @unchecked: mutable state behind `lock`; the slots as described above.
    private let lock = ConditionMutex()
    private let slots: UnsafeMutablePointer<io_uring_cqe>
    private let mask: UInt32
    @exclusivity(unchecked) private var head: UInt32 = 0
    @exclusivity(unchecked) private var tail: UInt32 = 0
    @exclusivity(unchecked) private var overflow = Deque<io_uring_cqe>()

    /// A queue of at least `capacity` slots (rounded up to a power of two).
    init(capacity: UInt32) {
        var size: UInt32 = 1
        while size < max(capacity, 2) { size <<= 1 }
        slots = .allocate(capacity: Int(size))
        slots.initialize(repeating: io_uring_cqe(), count: Int(size))
        mask = size - 1
    }

    deinit {
        slots.deallocate()
    }

    /// Completions posted and not yet advanced past (overflowed ones included).
    var count: Int {
        lock.withLock { Int(tail &- head) + overflow.count }
    }

    /// Posts one completion.
    func post(userData: UInt64, result: Int32) {
        var entry = io_uring_cqe()
        entry.user_data = userData
        entry.res = result
        lock.withLock { postLocked(entry) }
    }

    /// Posts several completions under one acquisition of the lock.
    func post(_ entries: UnsafeBufferPointer<io_uring_cqe>) {
        guard !entries.isEmpty else { return }
        lock.withLock {
            for entry in entries { postLocked(entry) }
        }
    }

    private func postLocked(_ entry: io_uring_cqe) {
        if overflow.isEmpty && tail &- head <= mask {
            slots[Int(tail & mask)] = entry
            tail &+= 1
        } else {
            overflow.append(entry)
        }
    }

    /// Fills `buffer` with pointers to the oldest completions and returns how many.
    func peek(into buffer: UnsafeMutableBufferPointer<UnsafeMutablePointer<io_uring_cqe>?>) -> Int {
        lock.withLock {
            let count = min(Int(tail &- head), buffer.count)
            for position in 0..<count {
                buffer[position] = slots + Int((head &+ UInt32(position)) & mask)
            }
            return count
        }
    }

    /// Returns `count` peeked slots and moves overflowed completions into them.
    func advance(by count: Int) {
        guard count > 0 else { return }
        lock.withLock {
            head &+= UInt32(count)
            while !overflow.isEmpty && tail &- head <= mask {
                slots[Int(tail & mask)] = overflow.removeFirst()
                tail &+= 1
            }
        }
    }
}
