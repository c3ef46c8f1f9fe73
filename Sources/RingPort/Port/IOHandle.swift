import DequeModule
import Synchronization

/// A file descriptor associated with a completion port, with its per-handle context: the
/// completion key of the classic model (`PER_HANDLE_DATA`: the socket, the peer's address,
/// and the application's own state).
///
/// Create one with ``CompletionPort/associate(descriptor:peerAddress:userState:ring:)``; every
/// completion of an operation posted on it carries it back in ``Completion/handle``. The handle
/// owns the descriptor from then on: ``CompletionPort/close(_:)`` closes it.
///
/// ## Thread-safety
/// The port never runs two completions of one handle at the same time, on any threads: a
/// completion of this handle is dequeued only after the thread that dequeued the previous one
/// has come back for more (or released it). ``userState`` relies on that: read and write it
/// only while handling a completion of this handle, or before the first operation is posted.
/// The other properties are immutable or synchronised.
public final class IOHandle: @unchecked Sendable {
    // @unchecked: `userState` is confined by the per-handle serialisation described above;
    // the bookkeeping below is guarded by the owning ring's lock; `closed` is atomic.
    //
    // Stored properties marked @exclusivity(unchecked) skip Swift's dynamic exclusivity checks:
    // every access is already serialised as described, and on the echo benchmark the checks
    // cost 12–14% of the server's CPU per message (measured with -enforce-exclusivity=unchecked
    // against the default build; docs/ARCHITECTURE.md).

    /// A handle's identity for keying the application's tables: a slot and a generation, not
    /// reused until one slot of its ring has been reused 2³² times (the generation is 32 bits),
    /// unlike the descriptor number, which the kernel hands out again as soon as it is closed.
    public struct ID: Hashable, Sendable, CustomStringConvertible {
        /// The ring that owns the handle (an index into the port's rings).
        public let ring: Int
        /// The handle's slot in its ring's handle table.
        public let slot: UInt32
        /// The slot's generation when the handle was created.
        public let generation: UInt32

        /// `ring.slot.generation`, for logs.
        public var description: String { "\(ring).\(slot).\(generation)" }
    }

    /// The file descriptor. Valid until the handle is closed; never use it to key state.
    public let descriptor: Int32
    /// Set by ``CompletionPort/close(_:)`` (declared here, next to the descriptor, where it
    /// fits in the same word).
    private let closed = Atomic<Bool>(false)
    /// The peer's address, when the association was given one (e.g. from an accept).
    public let peerAddress: SocketAddress?
    /// The handle's identity.
    public let id: ID
    /// The application's per-handle state. See the thread-safety rules above.
    ///
    /// Stored boxed (one pointer; setting a value allocates its box): inline, the existential
    /// would add 24 bytes to every handle, also to the many that never carry one (the
    /// package's own servers keep their state elsewhere).
    public var userState: (any Sendable)? {
        get { userStateBox?.value }
        set { userStateBox = newValue.map(Boxed.value) }
    }
    @exclusivity(unchecked) private var userStateBox: Boxed<any Sendable>?

    /// The object that handles this handle's completions, unretained, for the package's own
    /// layers (`TCPServer`'s connection): reached without the dynamic cast and the reference
    /// counting of ``userState``. Whoever sets it keeps the object alive, and clears it before
    /// letting it go. Same thread-safety rules as ``userState``. (A computed property over a
    /// private stored one: accessed from another module, a stored property would get dynamic
    /// exclusivity checks, which `@exclusivity(unchecked)` does not turn off across modules.)
    package var unretainedOwner: Unmanaged<AnyObject>? {
        get { unretainedOwnerStorage }
        set { unretainedOwnerStorage = newValue }
    }
    @exclusivity(unchecked) private var unretainedOwnerStorage: Unmanaged<AnyObject>?

    // Guarded by the owning ring's lock.
    /// The worker handling a completion of this handle, if any.
    @exclusivity(unchecked) var handlingWorker: ObjectIdentifier?
    /// Completions reaped while another thread handled this handle, in completion order.
    @exclusivity(unchecked) var deferredCompletions = Deque<Completion>()
    /// Contexts whose operations the kernel owns.
    @exclusivity(unchecked) var inflightContexts = InflightContexts()

    init(descriptor: Int32, peerAddress: SocketAddress?, userState: (any Sendable)?, id: ID) {
        self.descriptor = descriptor
        self.peerAddress = peerAddress
        userStateBox = userState.map(Boxed.value)
        self.id = id
    }

    /// Whether ``CompletionPort/close(_:)`` was called. Operations posted afterwards fail
    /// with ``RingPortError/Code/handleClosed``; completions of earlier ones still arrive.
    public var isClosed: Bool {
        closed.load(ordering: .acquiring)
    }

    /// Marks the handle closed; returns false when it already was.
    func markClosed() -> Bool {
        !closed.exchange(true, ordering: .acquiringAndReleasing)
    }
}
