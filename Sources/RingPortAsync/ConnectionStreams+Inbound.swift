import CRingPortThread
import DequeModule
import Glibc
import RingPort
import Synchronization

import struct NIOCore.ByteBuffer

/// The receiving side of a ``TCPConnection`` (the inbound half of ``ConnectionStreams``): one
/// receive kept armed while the consumer keeps up, the byte buffers that arrived and wait for
/// the consumer, and the consumer waiting for the next one.
///
/// ## Receives
/// With provided buffers (``AsyncPort/usesProvidedBuffers``) the receive is one multishot
/// receive: the kernel picks a buffer of the ring's pool for each arrival, the worker copies the
/// bytes into a ``ByteBufferCache`` buffer and gives the provided buffer straight back, so an
/// idle connection holds no receive buffer. Without them (the epoll backend, older kernels) it
/// is one plain receive into ``ConnectionStreams/receiveContext``'s buffer at a time, posted
/// again after each completion.
///
/// ## Backpressure
/// Buffers the consumer has not taken yet count against `inboundWatermarks.high`: at that many
/// bytes the receive is stopped (a multishot one is cancelled; bytes it delivers meanwhile are
/// kept) and the peer's sends fill the socket buffers. Once the consumer brought the count
/// under `inboundWatermarks.low` the receive is armed again.
///
/// ## Threads and ownership
/// ``ConnectionStreams/next()`` is called by the consuming task (one at a time),
/// ``ConnectionStreams/receiveCompleted(_:buffers:)`` by the worker that dequeued a receive
/// completion; the state is behind the object's mutex, and what has to happen outside it
/// (posting, resuming) is returned as an action. The receive context belongs to the port while
/// a receive is armed and carries the streams object as its attachment until the receive's last
/// completion (which cuts that link).
extension ConnectionStreams {
    struct InboundState: ~Copyable {
        var buffered = Deque<ByteBuffer>()
        var bufferedBytes = 0
        /// Why no more bytes will come, once that is known (the buffered ones still will).
        var end: InboundEnd?
        /// The waiting consumer. Its task (``UnsafeContinuation/waitingTask``) is what a
        /// cancellation handler compares with its own: each resumes only its own task's wait.
        var waiter: UnsafeContinuation<ByteBuffer?, any Error>?
        /// Last: single bytes.
        var receive = Receive.idle
        /// The scope's task was cancelled: its reads throw `CancellationError` (until the scope
        /// ends; a task's cancellation is for good).
        var scopeCancelled = false
        /// A consumer's cancellation handler ran while no consumer was waiting: it ran before
        /// the wait began (the task was cancelled already, or was cancelled meanwhile), or after
        /// the wait ended. Waits ask their task while it is set (a hint, not the answer: the
        /// consumer may be another task by then), and the cancelled task's wait clears it, so
        /// that a wait that is not cancelled does not pay `Task.isCancelled` (a retain and a
        /// release of the task) once the hint served.
        var cancellationSeen = false
    }

    enum Receive {
        /// No receive is posted.
        case idle
        /// A receive is posted (the port owns ``receiveContext``).
        case armed
        /// A multishot receive is posted and its cancellation asked for (backpressure).
        case stopping
    }

    enum InboundEnd: Sendable {
        /// The peer closed its side (a receive of 0 bytes).
        case finished
        /// The receive failed, or the connection was closed. Boxed: inline, the error would
        /// add 40 bytes to every connection (measured: 248 -> 208 bytes of the stream object).
        indirect case failed(RingPortError)
    }

    var inboundWatermarks: Watermarks {
        asyncPort.inboundWatermarks
    }

    /// What to do after a transition, outside the mutex.
    private struct InboundAction {
        /// Post the receive, for this many bytes (the room under the high watermark).
        var post: Int?
        var cancel = false
        var resume: (UnsafeContinuation<ByteBuffer?, any Error>, Result<ByteBuffer?, any Error>)?
    }

    /// Bytes received and not yet taken by the consumer.
    var bufferedByteCount: Int {
        withInboundState { $0.bufferedBytes }
    }

    // MARK: Consumer

    /// The next buffer of received bytes, waiting for one if none is buffered; nil once the
    /// peer closed its side and every buffer was taken. Runs on the caller's isolation
    /// (`nonisolated(nonsending)`, like ``write(_:)``): entering a plain nonisolated function
    /// switches to the generic executor, which for a task with an executor preference means a
    /// status-record lock in the runtime (`getPreferredTaskExecutor`) on every call.
    ///
    /// - Throws: `RingPortError` when the receive failed or the connection was closed (after
    ///   the buffers that arrived before); `RingPortError.Code.contextInFlight` when another
    ///   task is waiting already; `CancellationError` when the task is cancelled while it waits
    ///   (bytes that arrive later stay buffered for the next call).
    @usableFromInline
    nonisolated(nonsending) func next() async throws -> ByteBuffer? {
        // The common cases without suspending: a buffer is waiting, or the stream has ended.
        if mayHaveResult.load(ordering: .acquiring) {
            var action = InboundAction()
            let ready: Result<ByteBuffer?, any Error>? = withInboundState { state in
                if let buffer = takeBuffered(&state, &action) { return .success(buffer) }
                if let end = state.end { return end.result }
                return nil
            }
            perform(&action)
            if let ready { return try ready.get() }
        }

        // The read of a cancellation scope's own task waits without a handler of its own: the
        // scope's handler covers the whole scope (see `beginCancellationScope()`).
        let task = Self.currentTaskIdentity()
        if scopeTask.load(ordering: .relaxed) == task {
            return try await _unsafeInheritExecutor_withUnsafeThrowingContinuation {
                (continuation: UnsafeContinuation<ByteBuffer?, any Error>) in
                wait(continuation, scoped: true)
            }
        }
        // The variants that inherit the caller's executor, like this function: the standard ones
        // take an `isolation` parameter and switch to it on entry, on return and after the
        // continuation resumes (nil here, the generic executor), each switch a look-up of the
        // task's executor preference under its status lock. Two of the four switches per read
        // are gone with them (docs/ARCHITECTURE.md, "Locks per message"); the other two are this
        // function's own, after each call.
        return try await _unsafeInheritExecutor_withTaskCancellationHandler {
            try await _unsafeInheritExecutor_withUnsafeThrowingContinuation {
                (continuation: UnsafeContinuation<ByteBuffer?, any Error>) in
                wait(continuation, scoped: false)
            }
        } onCancel: {
            cancelWaitingRead(of: task, scoped: false)
        }
    }

    /// The cancellation handler of `task`'s read, or of its scope (`scoped`), ran: resumes
    /// `task`'s waiting read, if it is the one waiting, with `CancellationError` (the receive
    /// stays armed and what it delivers stays buffered). Another task's wait is not touched:
    /// a handler runs at once for a task cancelled already, also when that task's read is then
    /// refused because another one waits. The scope's handler marks the scope cancelled; a
    /// read's own handler that finds no wait of its task leaves the hint that the next wait
    /// asks its task.
    fileprivate func cancelWaitingRead(of task: UInt, scoped: Bool) {
        let waiter = withInboundState { state -> UnsafeContinuation<ByteBuffer?, any Error>? in
            if scoped { state.scopeCancelled = true }
            guard let waiter = state.waiter, waiter.waitingTask == task else {
                if !scoped { state.cancellationSeen = true }
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume(throwing: CancellationError())
    }

    /// Makes `continuation` the waiting consumer, or resumes it at once (a buffer or the end
    /// arrived meanwhile, another task waits already, or the task was cancelled). `scoped`: the
    /// caller is the cancellation scope's task, whose cancellation the scope's handler reports.
    private func wait(_ continuation: UnsafeContinuation<ByteBuffer?, any Error>, scoped: Bool) {
        assert(continuation.waitingTask == Self.currentTaskIdentity(), "a continuation is not its task")
        var action = InboundAction()
        let immediate: Result<ByteBuffer?, any Error>? = withInboundState { state in
            if let buffer = takeBuffered(&state, &action) { return .success(buffer) }
            if let end = state.end { return end.result }
            guard state.waiter == nil else {
                return .failure(RingPortError(.contextInFlight, operation: "read: another task is already reading"))
            }
            if scoped {
                if state.scopeCancelled { return .failure(CancellationError()) }
            } else if state.cancellationSeen, Task.isCancelled {
                // Cleared only by the cancelled task's own wait: another task's wait (a second
                // reader, refused or between waits) would take the hint from it.
                state.cancellationSeen = false
                return .failure(CancellationError())
            }
            state.waiter = continuation
            if case .idle = state.receive {
                state.receive = .armed
                action.post = inboundWatermarks.high - state.bufferedBytes
            }
            return nil
        }
        if let immediate { continuation.resume(with: immediate) }
        perform(&action)
    }

    // MARK: Cancellation scope

    /// Opens the calling task's cancellation scope on the connection: one cancellation handler
    /// for the task's reads until ``endCancellationScope(_:)``, instead of one per read (adding
    /// and removing a handler takes the task's status lock twice per read).
    /// ``TCPConnection/executeThenClose(_:)`` runs its body in one. Reads of other tasks (child
    /// tasks of the body, for example) keep their own handlers; so does the calling task when
    /// another scope of this connection is open already (then this returns nil).
    ///
    /// The handler is added through the runtime's entry points (`CRingPortThread`), not with
    /// `withTaskCancellationHandler`, whose frames around the body took an idle connection's
    /// task past its first allocator slab (about 1 KiB more per connection, measured).
    @usableFromInline
    func beginCancellationScope() -> CancellationScope {
        let task = Self.currentTaskIdentity()
        guard task != 0, scopeTask.compareExchange(expected: 0, desired: task, ordering: .relaxed).exchanged else {
            return CancellationScope(isOpen: false, record: nil)
        }
        withInboundState { $0.scopeCancelled = false }
        // Unretained: the caller holds the streams until it ends the scope, which removes the
        // handler. For a task cancelled already the runtime runs the handler at once and keeps
        // no record (nil): the scope is open all the same, and cancelled.
        return CancellationScope(
            isOpen: true, record: CRingPortThread_addScopeCancellationHandler(Unmanaged.passUnretained(self).toOpaque())
        )
    }

    /// Closes the scope ``beginCancellationScope()`` returned, on the same task, before the frame
    /// that opened it returns.
    @usableFromInline
    func endCancellationScope(_ scope: CancellationScope) {
        guard scope.isOpen else { return }
        if let record = scope.record { CRingPortThread_removeScopeCancellationHandler(record) }
        scopeTask.store(0, ordering: .relaxed)
    }

    /// What ``beginCancellationScope()`` did: opened the scope or not (another one is open), and
    /// the handler's record in the task, if the runtime kept one.
    @usableFromInline
    struct CancellationScope {
        @usableFromInline let isOpen: Bool
        @usableFromInline let record: UnsafeMutableRawPointer?

        @usableFromInline
        init(isOpen: Bool, record: UnsafeMutableRawPointer?) {
            self.isOpen = isOpen
            self.record = record
        }
    }

    /// The calling task's address (0 outside a task): what tells the scope's task from others.
    /// Read from the concurrency runtime's own accessor (`CRingPortThread`), unretained:
    /// `withUnsafeCurrentTask` retains and releases the task, and comparing it copied it once
    /// more (two retains and two releases per read, counted).
    @inline(__always)
    static func currentTaskIdentity() -> UInt {
        UInt(bitPattern: CRingPortThread_currentTask())
    }

    /// Pops the first buffered buffer, and arms the receive again when that brought the count
    /// under the low watermark.
    private func takeBuffered(_ state: inout InboundState, _ action: inout InboundAction) -> ByteBuffer? {
        guard let buffer = state.buffered.popFirst() else { return nil }
        state.bufferedBytes -= buffer.readableBytes
        if state.buffered.isEmpty && state.end == nil { mayHaveResult.store(false, ordering: .releasing) }
        if case .idle = state.receive, state.end == nil, state.bufferedBytes < inboundWatermarks.low {
            state.receive = .armed
            action.post = inboundWatermarks.high - state.bufferedBytes
        }
        return buffer
    }

    // MARK: Worker side

    /// A receive completion was dequeued (a worker thread, with its buffer cache).
    func receiveCompleted(_ completion: Completion, buffers: inout ByteBufferCache) {
        let last = !completion.hasMore
        // The last completion cuts the context's link to the streams; the link may be the last
        // reference to them, and the caller borrows it: kept until this returns.
        let link = last ? receiveContext.attachment.take() : nil
        defer { withExtendedLifetime(link) {} }
        var received: ByteBuffer?
        let count = completion.bytesTransferred
        if let provided = completion.receivedBuffer {
            var buffer = buffers.take(capacity: provided.count)
            _ = provided.withUnsafeBytes { buffer.writeBytes($0) }
            provided.release()
            received = buffer
        } else if count > 0 {
            var buffer = buffers.take(capacity: count)
            _ = receiveContext.withUnsafeBytes { buffer.writeBytes(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            received = buffer
        }

        var action = InboundAction()
        withInboundState { state in
            let wasStopping: Bool
            if case .stopping = state.receive { wasStopping = true } else { wasStopping = false }
            if last { state.receive = .idle }
            // `received` moves on (taken, not copied: a copy would retain its storage).
            if received != nil {
                if let waiter = state.waiter {
                    state.waiter = nil
                    action.resume = (waiter, .success(received.take()))
                } else {
                    let buffer = received.take().unsafelyUnwrapped
                    state.bufferedBytes += buffer.readableBytes
                    state.buffered.append(buffer)
                    mayHaveResult.store(true, ordering: .releasing)
                }
            } else if let error = completion.error {
                if error == .noBufferSpace {
                    // The ring's provided buffers ran out for a moment (a burst): arm again below.
                } else if completion.isCancelled {
                    if !wasStopping || handle.isClosed {
                        end(&state, .failed(RingPortError(.handleClosed, operation: "read on a closed connection")))
                    }
                } else {
                    end(
                        &state,
                        .failed(
                            RingPortError(.systemCallFailed, operation: "recv on connection \(handle.id)", errno: error)
                        ))
                }
            } else if completion.receivedBuffer == nil && count == 0 {
                end(&state, .finished)
            }
            if let waiter = state.waiter, let end = state.end, state.buffered.isEmpty {
                state.waiter = nil
                action.resume = (waiter, end.result)
            }
            switch state.receive {
            case .idle:
                if state.end == nil && state.bufferedBytes < inboundWatermarks.high {
                    state.receive = .armed
                    action.post = inboundWatermarks.high - state.bufferedBytes
                }
            case .armed:
                if state.bufferedBytes >= inboundWatermarks.high && asyncPort.usesProvidedBuffers {
                    state.receive = .stopping
                    action.cancel = true
                }
            case .stopping:
                break
            }
        }
        perform(&action)
    }

    /// Records why the stream ends (the first reason wins).
    private func end(_ state: inout InboundState, _ end: InboundEnd) {
        if state.end == nil { state.end = end }
        mayHaveResult.store(true, ordering: .releasing)
    }

    private func perform(_ action: inout InboundAction) {
        if let (continuation, result) = action.resume.take() { continuation.resume(with: result) }
        if action.cancel {
            // An error means the ring takes no submissions any more; the port then cancels the
            // receive itself when it closes.
            _ = try? port.cancel(receiveContext)
        }
        if let room = action.post { post(room: room) }
    }

    /// Posts the receive (the state says armed already). A multishot receive is limited to the
    /// bytes that fit under the high watermark where the kernel supports a limit, so that it
    /// ends by itself when the reader stops taking them.
    private func post(room: Int) {
        receiveContext.attachment = self
        do throws(RingPortError) {
            if asyncPort.usesProvidedBuffers {
                try port.receiveMultishot(handle, context: receiveContext, limit: room)
            } else {
                try port.read(handle, into: receiveContext)
            }
        } catch {
            receiveContext.attachment = nil
            let closed = error.code == .handleClosed || error.code == .portClosed
            let reason = closed ? RingPortError(.handleClosed, operation: "read on a closed connection") : error
            var action = InboundAction()
            withInboundState { state in
                state.receive = .idle
                end(&state, .failed(reason))
                if let waiter = state.waiter, state.buffered.isEmpty {
                    state.waiter = nil
                    action.resume = (waiter, .failure(reason))
                }
            }
            perform(&action)
        }
    }
}

extension ConnectionStreams.InboundEnd {
    /// What the consumer gets once the buffers are taken: nil for a clean end, the error
    /// otherwise.
    var result: Result<ByteBuffer?, any Error> {
        switch self {
        case .finished: .success(nil)
        case .failed(let error): .failure(error)
        }
    }
}

/// The handler of a connection's cancellation scope (see
/// `ConnectionStreams.beginCancellationScope()`), called on the cancelling thread by
/// `CRingPortThread`'s trampoline with the unretained streams: the scope's task's waiting read
/// throws, and so do its later ones.
@_cdecl("RingPortAsync_cancellationScopeCancelled")
func cancellationScopeCancelled(_ streams: UnsafeMutableRawPointer) {
    Unmanaged<ConnectionStreams>.fromOpaque(streams)._withUnsafeGuaranteedRef { streams in
        streams.cancelWaitingRead(of: streams.scopeTask.load(ordering: .relaxed), scoped: true)
    }
}

extension UnsafeContinuation {
    /// The address of the task this continuation resumes, comparable with
    /// ``ConnectionStreams/currentTaskIdentity()``: in the concurrency runtime a continuation is
    /// its task (`swift_continuation_init` returns the task), and the continuation value is that
    /// pointer. Checked where a wait begins (in debug builds: every test run).
    var waitingTask: UInt {
        UInt(bitPattern: unsafeBitCast(self, to: UnsafeRawPointer.self))
    }
}
