import DequeModule
import Glibc
import RingPort
import Synchronization

import struct NIOCore.ByteBuffer

/// The receiving side of a ``TCPConnection``: one receive kept armed while the consumer keeps
/// up, the byte buffers that arrived and wait for the consumer, and the consumer waiting for
/// the next one.
///
/// ## Receives
/// With provided buffers (``AsyncPort/usesProvidedBuffers``) the receive is one multishot
/// receive: the kernel picks a buffer of the ring's pool for each arrival, the worker copies the
/// bytes into a ``ByteBufferCache`` buffer and gives the provided buffer straight back, so an
/// idle connection holds no receive buffer. Without them (the epoll backend, older kernels) it
/// is one plain receive into ``context``'s buffer at a time, posted again after each
/// completion.
///
/// ## Backpressure
/// Buffers the consumer has not taken yet count against `watermarks.high`: at that many bytes
/// the receive is stopped (a multishot one is cancelled; bytes it delivers meanwhile are kept)
/// and the peer's sends fill the socket buffers. Once the consumer brought the count under
/// `watermarks.low` the receive is armed again.
///
/// ## Threads and ownership
/// ``next()`` is called by the consuming task (one at a time), ``complete(_:buffers:)`` by the
/// worker that dequeued a receive completion; the state is behind one mutex, and what has to
/// happen outside it (posting, resuming) is returned as an ``Action``. ``context`` belongs to
/// the port while a receive is armed and carries this stream as its attachment until the
/// receive's last completion (which cuts that link).
@usableFromInline
final class InboundStream: MutexGuardedObject, @unchecked Sendable {
    // @unchecked: `lockedState` is touched only inside `withState` (under the object's mutex,
    // ``MutexGuardedObject``); the rest is immutable, or atomic.
    let context: IOContext
    let handle: IOHandle
    /// The port, its pools and its settings (one reference for all of them, for the stream's
    /// size: ``context`` goes back to `asyncPort.receiveContexts` when the stream goes).
    let asyncPort: AsyncPort
    var watermarks: Watermarks {
        asyncPort.inboundWatermarks
    }
    @exclusivity(unchecked) private var lockedState = State()
    /// Whether a buffer is waiting or the stream has ended, published after every change under
    /// the mutex: ``next()`` looks here first and takes the mutex twice only when the answer may
    /// be there without waiting (a stale false only sends it to the waiting path, which looks
    /// again under the mutex).
    private let mayHaveResult = Atomic<Bool>(false)

    private struct State: ~Copyable {
        var buffered = Deque<ByteBuffer>()
        var bufferedBytes = 0
        /// Why no more bytes will come, once that is known (the buffered ones still will).
        var end: End?
        var waiter: UnsafeContinuation<ByteBuffer?, any Error>?
        /// Last, with ``mayHaveResult`` after it: the two single bytes share a word.
        var receive = Receive.idle
    }

    private enum Receive {
        /// No receive is posted.
        case idle
        /// A receive is posted (the port owns ``context``).
        case armed
        /// A multishot receive is posted and its cancellation asked for (backpressure).
        case stopping
    }

    enum End: Sendable {
        /// The peer closed its side (a receive of 0 bytes).
        case finished
        /// The receive failed, or the connection was closed. Boxed: inline, the error would
        /// add 40 bytes to every connection's stream (measured: 248 -> 208 bytes).
        indirect case failed(RingPortError)
    }

    /// What to do after a transition, outside the mutex.
    private struct Action {
        /// Post the receive, for this many bytes (the room under the high watermark).
        var post: Int?
        var cancel = false
        var resume: (UnsafeContinuation<ByteBuffer?, any Error>, Result<ByteBuffer?, any Error>)?
    }

    /// A stream for `handle`'s receives, with a context of `asyncPort.receiveContexts`.
    init(handle: IOHandle, on asyncPort: AsyncPort) {
        self.handle = handle
        self.asyncPort = asyncPort
        context = asyncPort.receiveContexts.take()
        context.userValue = AsyncPort.CompletionTarget.inbound.rawValue
    }

    deinit {
        // A receive in flight holds the stream (the context's attachment), so none is.
        if !context.isInFlight { asyncPort.receiveContexts.recycle(context) }
    }

    /// Bytes received and not yet taken by the consumer.
    var bufferedByteCount: Int {
        withState { $0.bufferedBytes }
    }

    // MARK: Consumer

    /// The next buffer of received bytes, waiting for one if none is buffered; nil once the
    /// peer closed its side and every buffer was taken.
    ///
    /// - Throws: `RingPortError` when the receive failed or the connection was closed (after
    ///   the buffers that arrived before); `RingPortError.Code.contextInFlight` when another
    ///   task is waiting already; `CancellationError` when the task is cancelled while it waits
    ///   (bytes that arrive later stay buffered for the next call).
    @usableFromInline
    func next() async throws -> ByteBuffer? {
        // The common cases without suspending: a buffer is waiting, or the stream has ended.
        if mayHaveResult.load(ordering: .acquiring) {
            var action = Action()
            let ready: Result<ByteBuffer?, any Error>? = withState { state in
                if let buffer = takeBuffered(&state, &action) { return .success(buffer) }
                if let end = state.end { return end.result }
                return nil
            }
            perform(action)
            if let ready { return try ready.get() }
        }

        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<ByteBuffer?, any Error>) in
                var action = Action()
                let immediate: Result<ByteBuffer?, any Error>? = withState { state in
                    if let buffer = takeBuffered(&state, &action) { return .success(buffer) }
                    if let end = state.end { return end.result }
                    guard state.waiter == nil else {
                        return .failure(
                            RingPortError(.contextInFlight, operation: "read: another task is already reading"))
                    }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiter = continuation
                    if case .idle = state.receive {
                        state.receive = .armed
                        action.post = watermarks.high - state.bufferedBytes
                    }
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
                perform(action)
            }
        } onCancel: {
            // Resumes the waiting consumer (one at a time reads, so it is this task's wait);
            // the receive stays armed and what it delivers stays buffered.
            let waiter = withState { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Pops the first buffered buffer, and arms the receive again when that brought the count
    /// under the low watermark.
    private func takeBuffered(_ state: inout State, _ action: inout Action) -> ByteBuffer? {
        guard let buffer = state.buffered.popFirst() else { return nil }
        state.bufferedBytes -= buffer.readableBytes
        if state.buffered.isEmpty && state.end == nil { mayHaveResult.store(false, ordering: .releasing) }
        if case .idle = state.receive, state.end == nil, state.bufferedBytes < watermarks.low {
            state.receive = .armed
            action.post = watermarks.high - state.bufferedBytes
        }
        return buffer
    }

    /// Runs `body` with the state, under the mutex.
    @inline(__always)
    private func withState<Result, Failure: Error>(
        _ body: (inout State) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try withMutex { () throws(Failure) -> Result in try body(&lockedState) }
    }

    // MARK: Worker side

    /// A receive completion was dequeued (a worker thread, with its buffer cache).
    func complete(_ completion: Completion, buffers: inout ByteBufferCache) {
        let last = !completion.hasMore
        if last { context.attachment = nil }
        var received: ByteBuffer?
        let count = completion.bytesTransferred
        if let provided = completion.receivedBuffer {
            var buffer = buffers.take(capacity: provided.count)
            _ = provided.withUnsafeBytes { buffer.writeBytes($0) }
            provided.release()
            received = buffer
        } else if count > 0 {
            var buffer = buffers.take(capacity: count)
            _ = context.withUnsafeBytes { buffer.writeBytes(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            received = buffer
        }

        var action = Action()
        withState { state in
            let wasStopping: Bool
            if case .stopping = state.receive { wasStopping = true } else { wasStopping = false }
            if last { state.receive = .idle }
            if let received {
                if let waiter = state.waiter {
                    state.waiter = nil
                    action.resume = (waiter, .success(received))
                } else {
                    state.bufferedBytes += received.readableBytes
                    state.buffered.append(received)
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
                if state.end == nil && state.bufferedBytes < watermarks.high {
                    state.receive = .armed
                    action.post = watermarks.high - state.bufferedBytes
                }
            case .armed:
                if state.bufferedBytes >= watermarks.high && asyncPort.usesProvidedBuffers {
                    state.receive = .stopping
                    action.cancel = true
                }
            case .stopping:
                break
            }
        }
        perform(action)
    }

    /// Records why the stream ends (the first reason wins).
    private func end(_ state: inout State, _ end: End) {
        if state.end == nil { state.end = end }
        mayHaveResult.store(true, ordering: .releasing)
    }

    private func perform(_ action: Action) {
        if let (continuation, result) = action.resume { continuation.resume(with: result) }
        if action.cancel {
            // An error means the ring takes no submissions any more; the port then cancels the
            // receive itself when it closes.
            _ = try? asyncPort.port.cancel(context)
        }
        if let room = action.post { post(room: room) }
    }

    /// Posts the receive (the state says armed already). A multishot receive is limited to the
    /// bytes that fit under the high watermark where the kernel supports a limit, so that it
    /// ends by itself when the reader stops taking them.
    private func post(room: Int) {
        context.attachment = self
        do throws(RingPortError) {
            if asyncPort.usesProvidedBuffers {
                try asyncPort.port.receiveMultishot(handle, context: context, limit: room)
            } else {
                try asyncPort.port.read(handle, into: context)
            }
        } catch {
            context.attachment = nil
            let closed = error.code == .handleClosed || error.code == .portClosed
            let reason = closed ? RingPortError(.handleClosed, operation: "read on a closed connection") : error
            var action = Action()
            withState { state in
                state.receive = .idle
                end(&state, .failed(reason))
                if let waiter = state.waiter, state.buffered.isEmpty {
                    state.waiter = nil
                    action.resume = (waiter, .failure(reason))
                }
            }
            perform(action)
        }
    }
}

extension InboundStream.End {
    /// What the consumer gets once the buffers are taken: nil for a clean end, the error
    /// otherwise.
    var result: Result<ByteBuffer?, any Error> {
        switch self {
        case .finished: .success(nil)
        case .failed(let error): .failure(error)
        }
    }
}
