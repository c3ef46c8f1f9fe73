/// The pending `IORING_OP_TIMEOUT`s of an ``EpollRing``: a binary min-heap of deadlines.
///
/// Not thread-safe: the ring's engine lock guards it.
struct TimerHeap {
    struct Timer {
        /// Nanoseconds on `CLOCK_MONOTONIC`.
        var deadline: UInt64
        var userData: UInt64
    }

    private var timers: [Timer] = []

    var isEmpty: Bool { timers.isEmpty }

    /// The earliest deadline, if any.
    var earliestDeadline: UInt64? { timers.first?.deadline }

    mutating func insert(_ timer: Timer) {
        timers.append(timer)
        siftUp(timers.count - 1)
    }

    /// Removes and returns the timer with the earliest deadline if it is at or before `now`.
    mutating func popExpired(now: UInt64) -> Timer? {
        guard let first = timers.first, first.deadline <= now else { return nil }
        remove(at: 0)
        return first
    }

    /// Removes the timer of `userData`; returns whether there was one.
    mutating func remove(userData: UInt64) -> Bool {
        guard let index = timers.firstIndex(where: { $0.userData == userData }) else { return false }
        remove(at: index)
        return true
    }

    private mutating func remove(at index: Int) {
        let last = timers.removeLast()
        guard index < timers.count else { return }
        timers[index] = last
        siftDown(index)
        siftUp(index)
    }

    private mutating func siftUp(_ start: Int) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard timers[child].deadline < timers[parent].deadline else { return }
            timers.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < timers.count else { return }
            let right = left + 1
            let smaller = right < timers.count && timers[right].deadline < timers[left].deadline ? right : left
            guard timers[smaller].deadline < timers[parent].deadline else { return }
            timers.swapAt(smaller, parent)
            parent = smaller
        }
    }
}
