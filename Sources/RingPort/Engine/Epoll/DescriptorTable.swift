import CLiburing

/// What an ``EpollRing`` knows of each descriptor it performs operations on, and the operations
/// that wait for one to become ready: per descriptor, a queue of readers and a queue of writers,
/// each in the order the operations were submitted.
///
/// Waiting operations live in one slab of slots linked into those queues, reused LIFO, so
/// parking an operation allocates nothing once the slab has grown to the peak number waiting.
///
/// Not thread-safe: the ring's engine lock guards it.
struct DescriptorTable {
    /// Which readiness an operation waits for.
    enum Direction {
        case read, write
    }

    /// What a descriptor is, found the first time an operation names it.
    enum Kind {
        case unknown
        /// A TCP or Unix stream socket: a receive shorter than asked for emptied it.
        case streamSocket
        /// A datagram or other socket.
        case otherSocket
        /// A regular file or block device: epoll cannot wait for it (the file operation pool).
        case file
        /// A pipe, an eventfd, a character device.
        case other
    }

    struct Descriptor {
        var readers = OperationQueue()
        var writers = OperationQueue()
        var kind = Kind.unknown
        /// Registered with the epoll instance (edge-triggered, both directions).
        var isRegistered = false
        /// No receive met `EAGAIN` since the last readiness event: worth trying at once.
        var mayRead = true
        /// No send met `EAGAIN` since the last readiness event.
        var mayWrite = true
        /// The peer shut down its side or the connection failed (`EPOLLRDHUP`, `EPOLLHUP`,
        /// `EPOLLERR` seen): receives never block again, so a short one does not mean that
        /// another must wait for an event (none would come: that edge was already reported).
        var readEnded = false
        /// The peer sent TCP urgent data (`EPOLLPRI` seen). A receive stops short at the urgent
        /// mark with the bytes after it already queued, and no new edge reports them: from then
        /// on a short receive does not mean the socket is empty.
        var sawUrgentData = false
        /// `O_NONBLOCK` was set on it here (listeners, pipes, eventfds).
        var isNonBlocking = false

        /// Whether an operation of `direction` is worth trying at once.
        func mayTry(_ direction: Direction) -> Bool {
            direction == .read ? mayRead : mayWrite
        }

        /// Updates the hints after an attempt in `direction`; returns whether the next operation
        /// of that direction is worth trying at once (false after `EAGAIN`, a connect under way,
        /// or a short receive from a stream socket whose peer has not shut down).
        mutating func record(_ attempt: ReadinessAttempt, _ direction: Direction) -> Bool {
            switch attempt {
            case .completed(_, let drained):
                if drained && !readEnded && !sawUrgentData { mayRead = false }
            case .wouldBlock:
                if direction == .read { mayRead = false } else { mayWrite = false }
            case .connecting:
                mayWrite = false
            }
            return mayTry(direction)
        }
    }

    /// Head and tail slots of a queue of waiting operations (-1: none).
    struct OperationQueue {
        var head: Int32 = -1
        var tail: Int32 = -1
        var isEmpty: Bool { head < 0 }
    }

    /// An operation waiting for its descriptor.
    struct WaitingOperation {
        var entry: io_uring_sqe
        var descriptor: Int32
        var direction: Direction
        /// A connect that was started and waits for the handshake to finish.
        var isConnecting: Bool
        var next: Int32 = -1
    }

    private var descriptors: ContiguousArray<Descriptor> = []
    private var slots: ContiguousArray<WaitingOperation> = []
    private var freeSlots: [Int32] = []
    /// Where each waiting operation is, by `user_data`, for cancellation.
    private var slotsByUserData: [UInt64: Int32] = [:]

    /// Waiting operations.
    var waitingCount: Int { slotsByUserData.count }

    /// The state of `descriptor`, created empty the first time.
    subscript(descriptor: Int32) -> Descriptor {
        get {
            let index = Int(descriptor)
            return index < descriptors.count ? descriptors[index] : Descriptor()
        }
        set {
            let index = Int(descriptor)
            if index >= descriptors.count {
                descriptors.append(contentsOf: repeatElement(Descriptor(), count: index + 1 - descriptors.count))
            }
            descriptors[index] = newValue
        }
    }

    /// Whether an operation of `direction` waits on `descriptor`.
    func hasWaiting(_ direction: Direction, on descriptor: Int32) -> Bool {
        let index = Int(descriptor)
        guard index < descriptors.count else { return false }
        return direction == .read ? !descriptors[index].readers.isEmpty : !descriptors[index].writers.isEmpty
    }

    /// Queues `operation` behind the others of its direction on its descriptor.
    mutating func wait(_ operation: WaitingOperation) {
        let slot: Int32
        if let free = freeSlots.popLast() {
            slot = free
            slots[Int(slot)] = operation
        } else {
            slot = Int32(slots.count)
            slots.append(operation)
        }
        slots[Int(slot)].next = -1
        slotsByUserData[operation.entry.user_data] = slot
        var state = self[operation.descriptor]
        if operation.direction == .read {
            append(slot, to: &state.readers)
        } else {
            append(slot, to: &state.writers)
        }
        self[operation.descriptor] = state
    }

    private mutating func append(_ slot: Int32, to queue: inout OperationQueue) {
        if queue.tail >= 0 {
            slots[Int(queue.tail)].next = slot
        } else {
            queue.head = slot
        }
        queue.tail = slot
    }

    /// The first operation of `direction` waiting on `descriptor`.
    func first(_ direction: Direction, on descriptor: Int32) -> WaitingOperation? {
        let index = Int(descriptor)
        guard index < descriptors.count else { return nil }
        let head = direction == .read ? descriptors[index].readers.head : descriptors[index].writers.head
        return head >= 0 ? slots[Int(head)] : nil
    }

    /// Marks the first waiting connect of `descriptor` as started.
    mutating func markFirstWriterConnecting(on descriptor: Int32) {
        let head = descriptors[Int(descriptor)].writers.head
        if head >= 0 { slots[Int(head)].isConnecting = true }
    }

    /// Removes the first operation of `direction` waiting on `descriptor`.
    @discardableResult
    mutating func removeFirst(_ direction: Direction, on descriptor: Int32) -> WaitingOperation? {
        let index = Int(descriptor)
        guard index < descriptors.count else { return nil }
        var queue = direction == .read ? descriptors[index].readers : descriptors[index].writers
        guard queue.head >= 0 else { return nil }
        let slot = queue.head
        let operation = slots[Int(slot)]
        queue.head = operation.next
        if queue.head < 0 { queue.tail = -1 }
        if direction == .read {
            descriptors[index].readers = queue
        } else {
            descriptors[index].writers = queue
        }
        release(slot, userData: operation.entry.user_data)
        return operation
    }

    /// Whether the waiting operation whose `user_data` is `userData` is the first of its
    /// direction on its descriptor (no operation waiting before it would be served first).
    func isFirstInItsQueue(userData: UInt64) -> Bool {
        guard let slot = slotsByUserData[userData] else { return false }
        let operation = slots[Int(slot)]
        return first(operation.direction, on: operation.descriptor)?.entry.user_data == userData
    }

    /// Removes the waiting operation whose `user_data` is `userData`, wherever it waits.
    mutating func remove(userData: UInt64) -> WaitingOperation? {
        guard let slot = slotsByUserData[userData] else { return nil }
        let operation = slots[Int(slot)]
        let index = Int(operation.descriptor)
        var queue = operation.direction == .read ? descriptors[index].readers : descriptors[index].writers
        var previous: Int32 = -1
        var current = queue.head
        while current >= 0 && current != slot {
            previous = current
            current = slots[Int(current)].next
        }
        precondition(current == slot, "a waiting operation missing from its descriptor's queue")
        if previous >= 0 {
            slots[Int(previous)].next = operation.next
        } else {
            queue.head = operation.next
        }
        if queue.tail == slot { queue.tail = previous }
        if operation.direction == .read {
            descriptors[index].readers = queue
        } else {
            descriptors[index].writers = queue
        }
        release(slot, userData: userData)
        return operation
    }

    /// Removes every operation waiting on `descriptor` (readers first) and forgets what was known
    /// of it.
    mutating func removeAll(on descriptor: Int32) -> [WaitingOperation] {
        var removed: [WaitingOperation] = []
        while let operation = removeFirst(.read, on: descriptor) { removed.append(operation) }
        while let operation = removeFirst(.write, on: descriptor) { removed.append(operation) }
        if Int(descriptor) < descriptors.count { descriptors[Int(descriptor)] = Descriptor() }
        return removed
    }

    private mutating func release(_ slot: Int32, userData: UInt64) {
        slotsByUserData[userData] = nil
        freeSlots.append(slot)
    }
}
