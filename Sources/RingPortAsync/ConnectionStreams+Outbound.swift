import Glibc
import RingPort
import Synchronization

import struct NIOCore.ByteBuffer

/// The sending side of a ``TCPConnection`` (the outbound half of ``ConnectionStreams``): the
/// byte buffers written and not yet sent, the one send in flight, the writer waiting for room,
/// and the half-close.
///
/// ## Sends
/// A write queues its buffer and, when no send is in flight, posts one at once: from the
/// buffer's own storage (no copy), or for several queued buffers one gathered `sendmsg` of up
/// to ``CompletionPort/gatheringCapacity(of:)`` of them. The queue (a ``SendQueue``: the first
/// buffer inline, so that a connection writing one at a time allocates no queue storage) holds
/// each buffer (and so its storage) until the kernel sent its last byte; then it goes to the
/// worker's ``ByteBufferCache``.
///
/// ## Backpressure
/// A write returns as soon as its buffer is queued, unless `outboundWatermarks.high` bytes are
/// queued already: then it waits, without queuing, until the sends brought the queue under
/// `outboundWatermarks.low` (a peer that stops reading stops the writer). Cancelled while it
/// waits, it throws `CancellationError` and has queued nothing.
///
/// ## Errors
/// A failed send (the peer reset, the connection closed) fails the outbound side: the queued
/// buffers are dropped, the waiting writer and every later write throw the error.
///
/// ## Threads and ownership
/// ``ConnectionStreams/write(_:)`` and ``ConnectionStreams/finish()`` are called by writing
/// tasks (one waits at a time), ``ConnectionStreams/sendCompleted(_:buffers:)`` by the worker
/// that dequeued a send completion; the state is behind the object's mutex. Each send takes a
/// context from the port's pools for its time in flight (a bare one for a single buffer, which
/// is sent from its own storage; one with a buffer for a gathered send's I/O vector), which
/// carries the streams object as its attachment until the completion: an idle connection holds
/// no send context.
extension ConnectionStreams {
    struct OutboundState: ~Copyable {
        var queue = SendQueue()
        // The two single bytes right after the queue, in the four bytes its count leaves free
        // (the state is 64 bytes, and the streams object 200: malloc's chunk of 208).
        var finish = Finish.open
        /// How many buffers at the queue's front the send in flight covers (0: none in flight;
        /// at most ``AsyncPort/gatheredBuffers``).
        var sending: UInt8 = 0
        var queuedBytes = 0
        var waiter: Waiter?
        /// The error that failed the outbound side. Boxed: inline, the error would add 40 bytes
        /// to every connection (measured: 193 -> 153 bytes of the stream object), for what most
        /// connections never have.
        var error: RingPortError? {
            get { boxedError?.value }
            set { boxedError = newValue.map(Boxed.value) }
        }
        private var boxedError: Boxed<RingPortError>?
    }

    var outboundWatermarks: Watermarks {
        asyncPort.outboundWatermarks
    }

    enum Waiter {
        /// A write waiting for room, with the buffer it will queue. Boxed (allocated when a
        /// writer has to wait, which backpressure makes rare): inline, the buffer would add
        /// 24 bytes to every connection's stream.
        indirect case write(UnsafeContinuation<Void, any Error>, ByteBuffer)
        /// ``finish()`` waiting for the queue to drain.
        case finish(UnsafeContinuation<Void, any Error>)

        var continuation: UnsafeContinuation<Void, any Error> {
            switch self {
            case .write(let continuation, _), .finish(let continuation): continuation
            }
        }
    }

    enum Finish {
        case open
        /// The write side shuts down once the queue is sent.
        case requested
        /// `shutdown(SHUT_WR)` was called (or failed).
        case done
    }

    /// What to do after a transition, outside the mutex.
    private struct OutboundAction: ~Copyable {
        var post: OutboundPost?
        var shutdown = false
        var resume: (UnsafeContinuation<Void, any Error>, Result<Void, any Error>)?
    }

    /// The memory of the send to post: one buffer, or several gathered.
    private enum OutboundPost {
        case one(UnsafeRawBufferPointer)
        case gathered(count: Int)
    }

    /// Bytes written and not yet sent.
    var queuedByteCount: Int {
        withOutboundState { $0.queuedBytes }
    }

    /// Whether a write waits for room (tests wait for this state).
    var hasWaitingWriter: Bool {
        withOutboundState { state in
            if case .write = state.waiter { true } else { false }
        }
    }

    // MARK: Writers

    /// Queues `buffer` for sending; waits first while `outboundWatermarks.high` bytes are queued.
    ///
    /// - Throws: the `RingPortError` that failed an earlier send (or `handleClosed`);
    ///   `RingPortError.Code.invalidArgument` after ``finish()``;
    ///   `RingPortError.Code.contextInFlight` when another writer is waiting already;
    ///   `CancellationError` when cancelled while waiting (nothing was queued).
    ///
    /// Consumes `buffer`: the caller's last copy moves into the queue without a retain.
    @usableFromInline
    nonisolated(nonsending) func write(_ buffer: consuming ByteBuffer) async throws {
        guard buffer.readableBytes > 0 else {
            // Nothing to send, but the same answer as any write.
            try withOutboundState { state throws(RingPortError) in try checkWritable(state) }
            return
        }
        var action = OutboundAction()
        var unqueued: ByteBuffer? = consume buffer
        try withOutboundState { state throws(RingPortError) in
            try checkWritable(state)
            guard state.queuedBytes < outboundWatermarks.high else { return }
            enqueue(unqueued.take().unsafelyUnwrapped, &state, &action)
        }
        guard let buffer = unqueued else {
            perform(&action)
            return
        }
        let task = Self.currentTaskIdentity()
        // Inheriting the caller's executor, as `next()` does (see there).
        try await _unsafeInheritExecutor_withTaskCancellationHandler {
            try await _unsafeInheritExecutor_withUnsafeThrowingContinuation {
                (continuation: UnsafeContinuation<Void, any Error>) in
                var action = OutboundAction()
                let immediate: Result<Void, any Error>? = withOutboundState { state in
                    do throws(RingPortError) {
                        try checkWritable(state)
                    } catch {
                        return .failure(error)
                    }
                    if state.queuedBytes < outboundWatermarks.low {
                        enqueue(buffer, &state, &action)
                        return .success(())
                    }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiter = .write(continuation, buffer)
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
                perform(&action)
            }
        } onCancel: {
            cancelWriter(of: task)
        }
    }

    /// Sends what is queued, then shuts the write side down (`shutdown(SHUT_WR)`: the peer reads
    /// an end of stream); returns when that happened. Later writes throw. Once it returned,
    /// calling it again returns at once.
    ///
    /// - Throws: the error that failed a send (then nothing more is sent);
    ///   `RingPortError.Code.contextInFlight` while a write waits for room, or another
    ///   `finish()` waits for the queue to drain (nothing changed);
    ///   `CancellationError` when cancelled while waiting (the shutdown still happens once the
    ///   queue is sent).
    func finish() async throws {
        var action = OutboundAction()
        let done: Result<Void, any Error>? = withOutboundState { state in
            if let error = state.error { return .failure(error) }
            if handle.isClosed {
                return .failure(RingPortError(.handleClosed, operation: "finish on a closed connection"))
            }
            switch state.finish {
            case .done: return .success(())
            case .requested: break
            case .open:
                // Refused without a change: requested now, the shutdown would follow the waiting
                // write, and every later write would fail, while this call reports an error.
                guard state.waiter == nil else {
                    return .failure(
                        RingPortError(.contextInFlight, operation: "finish: another task is already waiting to write"))
                }
                state.finish = .requested
            }
            if state.sending == 0 && state.queue.isEmpty {
                state.finish = .done
                action.shutdown = true
                return .success(())
            }
            return nil
        }
        perform(&action)
        if let done { return try done.get() }
        let task = Self.currentTaskIdentity()
        // Inheriting the caller's executor, as `next()` does (see there).
        try await _unsafeInheritExecutor_withTaskCancellationHandler {
            try await _unsafeInheritExecutor_withUnsafeThrowingContinuation {
                (continuation: UnsafeContinuation<Void, any Error>) in
                let immediate: Result<Void, any Error>? = withOutboundState { state in
                    if let error = state.error { return .failure(error) }
                    if case .done = state.finish { return .success(()) }
                    guard state.waiter == nil else {
                        return .failure(
                            RingPortError(
                                .contextInFlight, operation: "finish: another task is already waiting to write"))
                    }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiter = .finish(continuation)
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            cancelWriter(of: task)
        }
    }

    /// The cancellation handler of `task`'s write or `finish()` ran: resumes `task`'s waiting
    /// writer, if it is the one waiting, with `CancellationError`. Another task's wait is not
    /// touched (a handler runs at once for a task cancelled already, also when its write is then
    /// refused because another writer waits).
    private func cancelWriter(of task: UInt) {
        let waiter = withOutboundState { state -> Waiter? in
            guard let waiter = state.waiter, waiter.continuation.waitingTask == task else { return nil }
            state.waiter = nil
            return waiter
        }
        waiter?.continuation.resume(throwing: CancellationError())
    }

    /// Whether a write may queue now: the outbound side has not failed, the connection is open,
    /// the write side was not finished, and no other writer waits for room (it goes first:
    /// between the watermarks, a write that did not wait would otherwise pass it). Every write
    /// asks, also an empty one.
    private func checkWritable(_ state: borrowing OutboundState) throws(RingPortError) {
        if let error = state.error { throw error }
        if handle.isClosed { throw RingPortError(.handleClosed, operation: "write on a closed connection") }
        guard case .open = state.finish else {
            throw RingPortError(.invalidArgument, operation: "write after the write side was finished")
        }
        guard state.waiter == nil else {
            throw RingPortError(.contextInFlight, operation: "write: another task is already waiting to write")
        }
    }

    /// Appends `buffer` to the queue and posts a send if none is in flight.
    private func enqueue(
        _ buffer: consuming ByteBuffer, _ state: inout OutboundState, _ action: inout OutboundAction
    ) {
        state.queuedBytes += buffer.readableBytes
        state.queue.append(buffer)
        if state.sending == 0 { prepareSend(&state, &action) }
    }

    /// Takes up to a gathered send's worth of buffers off the queue's front for the next send.
    /// The buffers stay in the queue, unchanged, until the send completes, which keeps their
    /// memory valid for the kernel.
    private func prepareSend(_ state: inout OutboundState, _ action: inout OutboundAction) {
        let count = min(state.queue.count, AsyncPort.gatheredBuffers)
        state.sending = UInt8(count)
        if count == 1 {
            action.post = .one(state.queue.firstReadableBytes)
        } else {
            action.post = .gathered(count: count)
        }
    }

    // MARK: Worker side

    /// A send completion was dequeued (a worker thread, with its buffer cache).
    func sendCompleted(_ completion: Completion, buffers: inout ByteBufferCache) {
        // The send's context goes back to its pool (a gathered send's has a buffer). Its link to
        // the streams may be the last reference to them, and the caller borrows it: kept until
        // this returns. The context is read through the completion, which holds it for this
        // call: bound to a name of its own, it was retained and released.
        var link: AnyObject?
        defer { withExtendedLifetime(link) {} }
        if completion.context != nil {
            link = completion.context.unsafelyUnwrapped.attachment.take()
            if completion.context.unsafelyUnwrapped.capacity == 0 {
                recycleBareContext(completion.context.unsafelyUnwrapped)
            } else {
                asyncPort.gatherContexts.recycle(completion.context.unsafelyUnwrapped)
            }
        }
        var action = OutboundAction()
        withOutboundState { state in
            var sent = completion.bytesTransferred
            if let error = completion.error {
                fail(
                    &state,
                    completion.isCancelled
                        ? RingPortError(.handleClosed, operation: "write on a closed connection")
                        : RingPortError(.systemCallFailed, operation: "send on connection \(handle.id)", errno: error),
                    &action)
                return
            }
            guard sent > 0 else {
                fail(
                    &state,
                    RingPortError(
                        .systemCallFailed, operation: "send on connection \(handle.id) made no progress",
                        errno: .brokenPipe),
                    &action)
                return
            }
            state.queuedBytes -= sent
            while sent > 0, var first = state.queue.popFirst() {
                let count = first.readableBytes
                if count <= sent {
                    sent -= count
                    buffers.recycle(consume first)
                } else {
                    first.moveReaderIndex(forwardBy: sent)
                    state.queue.prepend(first)
                    sent = 0
                }
            }
            state.sending = 0
            if case .write(let continuation, let buffer) = state.waiter, state.queuedBytes < outboundWatermarks.low {
                state.waiter = nil
                state.queuedBytes += buffer.readableBytes
                state.queue.append(buffer)
                action.resume = (continuation, .success(()))
            }
            if !state.queue.isEmpty {
                prepareSend(&state, &action)
            } else if case .requested = state.finish {
                state.finish = .done
                action.shutdown = true
                if case .finish(let continuation) = state.waiter {
                    state.waiter = nil
                    action.resume = (continuation, .success(()))
                }
            }
        }
        perform(&action)
    }

    /// Fails the stream with `error`: drops the queue and fails the waiting writer.
    private func fail(_ state: inout OutboundState, _ error: RingPortError, _ action: inout OutboundAction) {
        if state.error == nil { state.error = error }
        state.queue.removeAll()
        state.queuedBytes = 0
        state.sending = 0
        if let waiter = state.waiter {
            state.waiter = nil
            action.resume = (waiter.continuation, .failure(state.error!))
        }
    }

    private func perform(_ action: inout OutboundAction) {
        if let post = action.post { self.post(post) }
        if action.shutdown {
            // Through the port, which checks the handle against a concurrent close under the
            // ring's lock (after the close, the descriptor's number may be another socket's). A
            // closed handle or a peer that is gone already (ENOTCONN) leaves nobody to tell.
            try? port.shutdownWriting(handle)
        }
        if let (continuation, result) = action.resume { continuation.resume(with: result) }
    }

    /// Posts the send the state prepared, with a context taken from the port's pools until its
    /// completion: `asyncPort.bareContexts` for a single buffer, `asyncPort.gatherContexts` for
    /// a gathered send.
    private func post(_ post: OutboundPost) {
        switch post {
        case .one(let bytes):
            let sendContext = takeBareContext()
            sendContext.userValue = AsyncPort.CompletionTarget.outbound.rawValue
            sendContext.attachment = self
            do throws(RingPortError) {
                try port.write(handle, from: bytes, context: sendContext)
            } catch {
                sendContext.attachment = nil
                recycleBareContext(sendContext)
                failToPost(error)
            }
        case .gathered(let count):
            let sendContext = asyncPort.gatherContexts.take()
            sendContext.userValue = AsyncPort.CompletionTarget.outbound.rawValue
            sendContext.attachment = self
            do throws(RingPortError) {
                try withOutboundState { state throws(RingPortError) in
                    try port.write(
                        handle, gathering: state.queue.prefix(count).lazy.map { $0.withUnsafeReadableBytes { $0 } },
                        context: sendContext)
                }
            } catch {
                sendContext.attachment = nil
                asyncPort.gatherContexts.recycle(sendContext)
                failToPost(error)
            }
        }
    }

    /// A bare context for a single send: from the calling worker's cache (no lock), else from
    /// the port's pool (a thread that is not a worker, or an empty cache).
    private func takeBareContext() -> IOContext {
        guard let local = WorkerJobs.current else { return bareContexts.take() }
        // The thread's worker keeps its instance while the thread runs, and the streams hold the
        // pool: both borrowed, not retained (passed as an argument, the pool was).
        return local._withUnsafeGuaranteedRef { local in
            Unmanaged.passUnretained(bareContexts)._withUnsafeGuaranteedRef { local.bareContexts.take(from: $0) }
        }
    }

    /// Gives a single send's context back: to the calling worker's cache (which hands a batch
    /// back to the port's pool when full), else to the pool.
    private func recycleBareContext(_ context: consuming IOContext) {
        guard let local = WorkerJobs.current else { return bareContexts.recycle(context) }
        var context: IOContext? = consume context
        local._withUnsafeGuaranteedRef { local in
            Unmanaged.passUnretained(bareContexts)._withUnsafeGuaranteedRef {
                local.bareContexts.recycle(context.take().unsafelyUnwrapped, to: $0)
            }
        }
    }

    /// A send could not be posted (its context is free again): fails the stream.
    private func failToPost(_ error: RingPortError) {
        let closed = error.code == .handleClosed || error.code == .portClosed
        var action = OutboundAction()
        withOutboundState { state in
            fail(
                &state, closed ? RingPortError(.handleClosed, operation: "write on a closed connection") : error,
                &action)
        }
        perform(&action)
    }
}
