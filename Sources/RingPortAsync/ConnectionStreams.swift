import RingPort
import Synchronization

/// Both streams of a ``TCPConnection`` in one object: the receiving side (the receive kept
/// armed, the buffers waiting for the consumer; `ConnectionStreams+Inbound.swift`) and the
/// sending side (the queued buffers, the send in flight, the waiting writer, the half-close;
/// `ConnectionStreams+Outbound.swift`).
///
/// One object rather than one per side, for memory: every idle connection holds it, and one
/// object has one header, one mutex and one copy of the handle and port references (malloc's
/// chunks for the two sides, traced with 1,000 idle async connections: 128 + 176 bytes as two
/// objects, 224 as one; 208 once the small fields filled the padding).
///
/// ## Threads and ownership
/// The two sides' states are behind the object's one mutex (``MutexGuardedObject``), each
/// reached only through its own accessor (``withInboundState(_:)``, ``withOutboundState(_:)``).
/// The consuming task and the writing task call in from anywhere; the port's workers call
/// ``receiveCompleted(_:buffers:)`` and ``sendCompleted(_:buffers:)``, never both at once (the
/// port serialises a handle's completions). What has to happen outside the mutex (posting,
/// resuming a continuation) is returned by each transition as an action.
///
/// Lifetime: the ``TCPConnection`` holds it, and so do the inbound sequence, its iterator and the
/// outbound writer, which may outlive the connection; an operation in flight holds it as its
/// context's attachment until its last completion. ``receiveContext`` goes back to its pool
/// when the object goes (no receive can be in flight then).
@usableFromInline
final class ConnectionStreams: MutexGuardedObject, @unchecked Sendable {
    // @unchecked: `inboundState` and `outboundState` are touched only inside
    // `withInboundState` and `withOutboundState` (under the object's mutex); the rest is
    // immutable, or atomic.
    let handle: IOHandle
    /// The port, its pools and its settings (one reference for all of them).
    let asyncPort: AsyncPort
    /// `asyncPort.port`, kept here too: an operation posted through `asyncPort` costs a retain
    /// and a release of the port per message, one through this property none.
    let port: CompletionPort
    /// `asyncPort.bareContexts`, likewise kept here: a single send takes its context from it.
    let bareContexts: ContextPool
    /// The receive's context, the port's while a receive is armed.
    let receiveContext: IOContext
    @exclusivity(unchecked) var inboundState = InboundState()
    /// Whether a received buffer is waiting or the inbound side has ended, published after
    /// every change under the mutex: ``next()`` looks here first and takes the mutex twice only
    /// when the answer may be there without waiting (a stale false only sends it to the waiting
    /// path, which looks again under the mutex). Right after the inbound state, in the padding
    /// its last byte leaves.
    let mayHaveResult = Atomic<Bool>(false)
    @exclusivity(unchecked) var outboundState = OutboundState()
    /// The task running the connection's cancellation scope (``beginCancellationScope()``),
    /// as ``currentTaskIdentity()`` gives it; 0 when none runs. Compared by the reading task
    /// with its own, so relaxed: only the scope's own task can find it equal.
    let scopeTask = Atomic<UInt>(0)

    /// The streams of `handle`, with a receive context of `asyncPort.receiveContexts`.
    init(handle: IOHandle, on asyncPort: AsyncPort) {
        self.handle = handle
        self.asyncPort = asyncPort
        port = asyncPort.port
        bareContexts = asyncPort.bareContexts
        receiveContext = asyncPort.receiveContexts.take()
        receiveContext.userValue = AsyncPort.CompletionTarget.inbound.rawValue
    }

    deinit {
        // A receive in flight holds the object (the context's attachment), so none is.
        if !receiveContext.isInFlight { asyncPort.receiveContexts.recycle(receiveContext) }
    }

    /// Runs `body` with the inbound side's state, under the mutex.
    @inline(__always)
    func withInboundState<Result, Failure: Error>(
        _ body: (inout InboundState) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try withMutex { () throws(Failure) -> Result in try body(&inboundState) }
    }

    /// Runs `body` with the outbound side's state, under the mutex.
    @inline(__always)
    func withOutboundState<Result, Failure: Error>(
        _ body: (inout OutboundState) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try withMutex { () throws(Failure) -> Result in try body(&outboundState) }
    }
}
