import Glibc
import RingPort

/// One load worker: the completion handling of `ringport load` on one thread.
///
/// It dequeues completions from its ``CompletionWorker`` in batches and, for each:
/// - a **receive** is checked byte by byte against the pattern (``EchoPattern``) and completes
///   messages (their round-trip time goes into the histogram when they complete inside the
///   measured window), which opens the send window. A single receive is posted again with the
///   same context; a multishot receive hands its provided buffer back to the ring at once and
///   stays posted (it is posted again only when it ended, e.g. for lack of buffers);
/// - a **send** moves the connection's acknowledged position (a short send is finished by the
///   next one) and, if the window allows, the next send is posted: as many whole or partial
///   messages as the window and the buffer hold, regenerated from the pattern into the
///   connection's send context.
///
/// Each connection has one receive and at most one send in flight, each with its own context
/// that is reused for the whole run: steady-state traffic allocates nothing in this code (the
/// port's own bookkeeping reuses its slots too).
///
/// ## Time
/// The monotonic clock is read twice per batch, not per message: once after the dequeue returns
/// (the arrival time of every echo in the batch), and once just before the next dequeue, which
/// submits the sends the batch posted: that is when their first bytes are handed to the kernel,
/// so that time is stamped on every message whose first byte they carry.
///
/// ## Threads and ownership
/// A value owned by one thread: the main thread for worker 0, an extra thread for the
/// others. Its tally and pending stamps are its own; connection entries in ``LoadConnections``
/// are touched only while handling a completion of that connection, which the completion port
/// serialises per handle. The worker must keep running (its thread alive) until the run ends:
/// the kernel cancels the operations a thread submitted when it exits.
struct LoadWorker {
    /// Why a connection failed.
    enum Failure: CustomStringConvertible {
        /// The server closed the connection (a receive of 0 bytes).
        case prematureClose
        /// An operation completed with an error, or could not be posted.
        case socketError(operation: String, errno: Int32)
        /// More bytes arrived than were sent.
        case unsolicitedData
        /// Posting an operation failed in the port.
        case postFailed(operation: String, error: RingPortError)

        var description: String {
            switch self {
            case .prematureClose: "server closed the connection"
            case .socketError(let operation, let errno): "\(operation): \(String(cString: strerror(errno)))"
            case .unsolicitedData: "received more bytes than were sent"
            case .postFailed(let operation, let error): "\(operation): \(error)"
            }
        }
    }

    private let port: CompletionPort
    private let connections: LoadConnections
    private let pattern: EchoPattern
    private let shared: LoadRunState
    private let progress: WorkerProgress
    private let messageSize: Int
    private let depth: UInt64
    private let depthCount: Int
    private let measureStart: UInt64
    private let measureEnd: UInt64
    private let batchLimit: Int
    private let states: UnsafeMutablePointer<LoadConnection>
    private let sendTimes: UnsafeMutablePointer<UInt64>
    private let sendContexts: ContiguousArray<IOContext>
    /// Connections whose last posted send carries first bytes of messages, to stamp before the
    /// next dequeue.
    private var pendingStamps: [UInt32] = []
    private let samplesCPU: Bool
    private let multishot: Bool

    /// What this worker counted.
    private(set) var tally: LoadTally
    /// When the worker stopped (monotonic nanoseconds).
    private(set) var stoppedAt: UInt64 = 0
    /// Process CPU seconds when the measured window started and when the worker stopped (only
    /// for the worker created with `samplesCPU`).
    private(set) var cpuAtMeasureStart: Double?
    private(set) var cpuAtStop: Double?
    /// Why the worker stopped early, if the port failed.
    private(set) var fault: String?

    /// A worker for a run whose messages count from `measureStart` to `measureEnd` (monotonic
    /// nanoseconds). `samplesCPU`: sample the process CPU time at the window's start and at the
    /// stop (one worker does).
    init(
        port: CompletionPort, connections: LoadConnections, pattern: EchoPattern, shared: LoadRunState,
        progress: WorkerProgress, plan: LoadPlan, measureStart: UInt64, measureEnd: UInt64, samplesCPU: Bool
    ) {
        self.port = port
        self.connections = connections
        self.pattern = pattern
        self.shared = shared
        self.progress = progress
        messageSize = plan.messageSize
        depth = UInt64(plan.depth)
        depthCount = plan.depth
        self.measureStart = measureStart
        self.measureEnd = measureEnd
        batchLimit = min(16384, 2 * plan.connections + 64)
        states = connections.states
        sendTimes = connections.sendTimes
        sendContexts = connections.sendContexts
        self.samplesCPU = samplesCPU
        multishot = plan.receiveMode == .multishot
        tally = LoadTally(highestLatency: (plan.warmup + plan.duration + LoadPlan.teardownAllowance).nanosecondsClamped)
        pendingStamps.reserveCapacity(plan.connections)
    }

    // MARK: Running

    /// Posts connection `index`'s first receive and first send. Called on the main thread for
    /// every connection before any worker runs; ``stampPending(at:)`` then stamps the sends.
    mutating func start(connection index: Int, handle: IOHandle) {
        guard postReceiveOrFail(index, handle, context: connections.receiveContexts[index]) else { return }
        sendMore(index, handle)
    }

    /// Handles completions until the measured window ends or no connection is left. Runs on the
    /// worker's thread, which owns `worker`.
    mutating func run(on worker: CompletionWorker) {
        var batch: [Completion] = []
        batch.reserveCapacity(batchLimit)
        while true {
            // The sends posted since the last dequeue go to the kernel in that dequeue.
            let now = MonotonicInstant.now.nanoseconds
            stampPending(at: now)
            progress.publish(tally)
            if samplesCPU && cpuAtMeasureStart == nil && now >= measureStart {
                cpuAtMeasureStart = Self.processCPUSeconds()
            }
            if now >= measureEnd || shared.openConnections.load(ordering: .relaxed) == 0 {
                stoppedAt = now
                break
            }
            do {
                _ = try worker.dequeue(
                    into: &batch, maximumCount: batchLimit, timeout: .nanoseconds(Int64(measureEnd - now)))
            } catch {
                fault = "waiting for completions: \(error)"
                stoppedAt = MonotonicInstant.now.nanoseconds
                break
            }
            if batch.isEmpty { continue }
            let arrival = MonotonicInstant.now.nanoseconds
            for completion in batch {
                handle(completion, at: arrival)
            }
            batch.removeAll(keepingCapacity: true)
        }
        if samplesCPU {
            cpuAtStop = Self.processCPUSeconds()
        }
    }

    /// Stamps `time` as the send time of the messages whose first bytes went out in the sends
    /// posted since the last call.
    mutating func stampPending(at time: UInt64) {
        for connection in pendingStamps {
            let index = Int(connection)
            var sequence = states[index].stampFrom
            let end = states[index].stampTo
            let base = index * depthCount
            while sequence < end {
                sendTimes[base + Int(sequence % depth)] = time
                sequence += 1
            }
        }
        pendingStamps.removeAll(keepingCapacity: true)
    }

    // MARK: Completions

    @inline(__always)
    private mutating func handle(_ completion: Completion, at arrival: UInt64) {
        guard let context = completion.context, let handle = completion.handle else { return }
        let index = Int(truncatingIfNeeded: context.userValue)
        // A failed connection's other operations complete cancelled (or finished): ignore them.
        guard states[index].isOpen else {
            completion.receivedBuffer?.release()
            return
        }
        let operation = completion.operation
        if operation == .read {
            if let buffer = completion.receivedBuffer {
                receivedIntoProvidedBuffer(
                    buffer, hasMore: completion.hasMore, index: index, handle: handle, context: context, at: arrival)
            } else {
                received(completion.result, index: index, handle: handle, context: context, at: arrival)
            }
        } else if operation == .write {
            sent(completion.result, index: index, handle: handle)
        }
    }

    /// Posts the connection's receive: a multishot receive into the port's provided buffers, or
    /// a receive into `context`'s buffer.
    @inline(__always)
    private func postReceive(_ index: Int, _ handle: IOHandle, context: IOContext) throws(RingPortError) {
        if multishot {
            try port.receiveMultishot(handle, context: context)
        } else {
            try port.read(handle, into: context)
        }
    }

    /// A receive without bytes completed: the end of the stream, an error, or (multishot) the
    /// end of the receive because the ring had no free buffer, after which it is posted again.
    private mutating func receiveEnded(_ result: Int32, index: Int, handle: IOHandle, context: IOContext) {
        if result == 0 {
            fail(index, handle, .prematureClose)
        } else if multishot && result == -ENOBUFS {
            // The buffers of this batch are back by the time the next dequeue submits this.
            tally.bufferExhaustions += 1
            _ = postReceiveOrFail(index, handle, context: context)
        } else {
            fail(index, handle, .socketError(operation: "receive", errno: -result))
        }
    }

    /// A receive completed with `result` bytes (or an error) into `context`.
    @inline(__always)
    private mutating func received(
        _ result: Int32, index: Int, handle: IOHandle, context: IOContext, at arrival: UInt64
    ) {
        guard result > 0 else {
            receiveEnded(result, index: index, handle: handle, context: context)
            return
        }
        let consumed = context.withUnsafeBytes { buffer in
            consume(buffer.baseAddress!, count: Int(result), index: index, at: arrival)
        }
        continueAfterReceiving(consumed: consumed, repost: true, index: index, handle: handle, context: context)
    }

    /// A multishot receive delivered bytes in a provided buffer: they are checked and the buffer
    /// goes back to the ring at once. When the receive ended (`hasMore` false), it is posted again.
    @inline(__always)
    private mutating func receivedIntoProvidedBuffer(
        _ buffer: ReceivedBuffer, hasMore: Bool, index: Int, handle: IOHandle, context: IOContext, at arrival: UInt64
    ) {
        let count = buffer.count
        let consumed = buffer.withUnsafeBytes { bytes in
            consume(bytes.baseAddress!, count: count, index: index, at: arrival)
        }
        buffer.release()
        continueAfterReceiving(consumed: consumed, repost: !hasMore, index: index, handle: handle, context: context)
    }

    /// After received bytes were checked: fails the connection if they were more than was sent,
    /// posts the receive again when `repost`, and sends more when no send is in flight.
    @inline(__always)
    private mutating func continueAfterReceiving(
        consumed: Bool, repost: Bool, index: Int, handle: IOHandle, context: IOContext
    ) {
        guard consumed else {
            fail(index, handle, .unsolicitedData)
            return
        }
        if repost && !postReceiveOrFail(index, handle, context: context) { return }
        if !states[index].isSending {
            sendMore(index, handle)
        }
    }

    /// Posts the connection's receive (again); on failure fails the connection and returns false.
    @inline(__always)
    private mutating func postReceiveOrFail(_ index: Int, _ handle: IOHandle, context: IOContext) -> Bool {
        do {
            try postReceive(index, handle, context: context)
            return true
        } catch {
            fail(index, handle, .postFailed(operation: "receive", error: error))
            return false
        }
    }

    /// Checks `count` received bytes against the messages they belong to and completes messages.
    /// Returns false when more bytes arrived than were posted for sending.
    @inline(__always)
    private mutating func consume(_ bytes: UnsafeRawPointer, count: Int, index: Int, at arrival: UInt64) -> Bool {
        let state = states + index
        var position = bytes
        var left = count
        while left > 0 {
            let sequence = state.pointee.receivedSequence
            let offset = state.pointee.receivedOffset
            let postedSequence = state.pointee.postedSequence
            let sentOfMessage =
                sequence < postedSequence
                ? messageSize : (sequence == postedSequence ? state.pointee.postedOffset : 0)
            let chunk = min(sentOfMessage - offset, left)
            guard chunk > 0 else { return false }
            let bad = pattern.mismatches(
                in: position, connection: UInt32(truncatingIfNeeded: index), sequence: sequence, from: offset,
                count: chunk)
            if bad > 0 {
                tally.mismatchedBytes += UInt64(bad)
                if !state.pointee.isCorrupt {
                    state.pointee.isCorrupt = true
                    tally.corruptedMessages += 1
                }
            }
            position += chunk
            left -= chunk
            if offset + chunk == messageSize {
                if arrival >= measureStart && arrival < measureEnd {
                    let sentAt = sendTimes[index * depthCount + Int(sequence % depth)]
                    tally.latencies.record(arrival > sentAt ? arrival - sentAt : 0)
                    tally.measuredMessages += 1
                }
                tally.completedMessages += 1
                state.pointee.receivedSequence = sequence + 1
                state.pointee.receivedOffset = 0
                state.pointee.isCorrupt = false
            } else {
                state.pointee.receivedOffset = offset + chunk
            }
        }
        return true
    }

    /// A send completed with `result` bytes (or an error).
    @inline(__always)
    private mutating func sent(_ result: Int32, index: Int, handle: IOHandle) {
        let state = states + index
        state.pointee.isSending = false
        guard result > 0 else {
            fail(index, handle, .socketError(operation: "send", errno: result == 0 ? EPIPE : -result))
            return
        }
        let total = state.pointee.acknowledgedOffset + Int(result)
        if total < messageSize {
            state.pointee.acknowledgedOffset = total
        } else {
            state.pointee.acknowledgedSequence += UInt64(total / messageSize)
            state.pointee.acknowledgedOffset = total % messageSize
        }
        // Whatever the kernel did not take is posted again from here.
        state.pointee.postedSequence = state.pointee.acknowledgedSequence
        state.pointee.postedOffset = state.pointee.acknowledgedOffset
        sendMore(index, handle)
    }

    /// Posts the next send of connection `index` if its window allows: from the acknowledged
    /// position, as many bytes as the window and the send buffer hold.
    @inline(__always)
    private mutating func sendMore(_ index: Int, _ handle: IOHandle) {
        let state = states + index
        let limit = state.pointee.receivedSequence + depth
        let fromSequence = state.pointee.acknowledgedSequence
        let fromOffset = state.pointee.acknowledgedOffset
        guard fromSequence < limit else { return }
        let context = sendContexts[index]
        let count = min(Int(limit - fromSequence) * messageSize - fromOffset, context.capacity)
        var sequence = fromSequence
        var offset = fromOffset
        let pattern = self.pattern
        let messageSize = self.messageSize
        context.withUnsafeMutableBytes { buffer in
            let base = buffer.baseAddress!
            var filled = 0
            while filled < count {
                let chunk = min(messageSize - offset, count - filled)
                pattern.fill(
                    base + filled, connection: UInt32(truncatingIfNeeded: index), sequence: sequence, from: offset,
                    count: chunk)
                filled += chunk
                offset += chunk
                if offset == messageSize {
                    sequence += 1
                    offset = 0
                }
            }
        }
        do {
            try port.write(handle, from: context, range: 0..<count)
        } catch {
            fail(index, handle, .postFailed(operation: "send", error: error))
            return
        }
        state.pointee.isSending = true
        state.pointee.postedSequence = sequence
        state.pointee.postedOffset = offset
        // Messages whose first byte is in this send get their send time at the next submit.
        let firstStarting = fromOffset == 0 ? fromSequence : fromSequence + 1
        let endStarting = offset > 0 ? sequence + 1 : sequence
        if firstStarting < endStarting {
            state.pointee.stampFrom = firstStarting
            state.pointee.stampTo = endStarting
            pendingStamps.append(UInt32(truncatingIfNeeded: index))
        }
    }

    /// Counts a failed connection, reports it (the first few), and closes it: its other
    /// operation completes cancelled and is ignored.
    private mutating func fail(_ index: Int, _ handle: IOHandle, _ failure: Failure) {
        states[index].isOpen = false
        switch failure {
        case .prematureClose: tally.prematureCloses += 1
        case .socketError, .postFailed: tally.socketErrors += 1
        case .unsolicitedData: tally.unsolicitedData += 1
        }
        shared.report("connection \(index): \(failure)")
        port.close(handle)
        shared.openConnections.subtract(1, ordering: .relaxed)
    }

    /// User plus system CPU seconds of the whole process so far (every thread).
    static func processCPUSeconds() -> Double {
        var usage = rusage()
        getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
            + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    }
}
