/// What the port remembers about an operation the kernel owns, in the ring's in-flight
/// table. The SQE's `user_data` is the record's address (see ``UserData``), never a pointer.
///
/// Ownership: the record holds one reference to its context (and so its buffer and scratch
/// memory) and one to its handle, from the post until the completion is reaped, as unmanaged
/// references (taken with `passRetained` at the post, handed to the ``Completion`` with
/// `takeRetainedValue` when the last CQE is reaped): the record is a plain value, and moving
/// it through the in-flight table costs no reference counting.
struct OperationRecord {
    // Declared largest first, the flags in one byte: 34 bytes, so that a table entry (the
    // record and its slot's generation) is 40 bytes. Every connection keeps one or two records
    // in the table, and the table keeps its capacity.

    /// Holds the context alive until the completion (a retained reference).
    var context: Unmanaged<IOContext>?
    /// Holds the handle alive until the completion (a retained reference).
    var handle: Unmanaged<IOHandle>?
    var userValue: UInt64
    /// For user posts: the result and value to deliver. For zero-copy sends: the result of the
    /// first CQE, delivered with the notification CQE that ends the operation.
    var postedResult: Int32
    /// The ring's leadership epoch when it was posted (``RingLeadership/epoch``): requests
    /// posted under an earlier leader thread were submitted by it (see `Ring.migrateLocked()`).
    var epoch: UInt32 = 0
    var operation: IOOperation
    private var flags = Flags()

    private struct Flags: OptionSet {
        var rawValue: UInt8 = 0
        static let zeroCopy = Flags(rawValue: 1 << 0)
        static let injected = Flags(rawValue: 1 << 1)
        static let canMigrate = Flags(rawValue: 1 << 2)
        static let migrating = Flags(rawValue: 1 << 3)
        static let cancelRequested = Flags(rawValue: 1 << 4)
    }

    init(
        operation: IOOperation, context: Unmanaged<IOContext>?, handle: Unmanaged<IOHandle>?, postedResult: Int32,
        userValue: UInt64, isZeroCopy: Bool, epoch: UInt32
    ) {
        self.operation = operation
        self.context = context
        self.handle = handle
        self.postedResult = postedResult
        self.userValue = userValue
        self.epoch = epoch
        self.isZeroCopy = isZeroCopy
    }

    /// A `SEND_ZC`: one completion is delivered, when the kernel no longer needs the buffer.
    var isZeroCopy: Bool {
        get { flags.contains(.zeroCopy) }
        set { flags.update(.zeroCopy, to: newValue) }
    }
    /// A NOP stands in for the operation (``FaultInjection``); on kernels that cannot inject
    /// its result, ``postedResult`` is the result to deliver.
    var isInjected: Bool {
        get { flags.contains(.injected) }
        set { flags.update(.injected, to: newValue) }
    }
    /// The request may wait on the network for long and can be cancelled and submitted again
    /// unchanged (a receive, an accept, an absolute timeout; see `Ring.waitsOnTheNetwork(_:)`):
    /// its SQE is kept for that.
    var canMigrate: Bool {
        get { flags.contains(.canMigrate) }
        set { flags.update(.canMigrate, to: newValue) }
    }
    /// Cancelled to be submitted again by the current leader; its `ECANCELED` is not delivered.
    var isMigrating: Bool {
        get { flags.contains(.migrating) }
        set { flags.update(.migrating, to: newValue) }
    }
    /// The application (or a close) asked for its cancellation: its `ECANCELED` is delivered,
    /// never taken for a migration's.
    var cancelRequested: Bool {
        get { flags.contains(.cancelRequested) }
        set { flags.update(.cancelRequested, to: newValue) }
    }
}

extension OptionSet {
    /// Inserts `member` when `isMember`, removes it otherwise.
    fileprivate mutating func update(_ member: Element, to isMember: Bool) {
        if isMember { insert(member) } else { remove(member) }
    }
}

/// The 64-bit `user_data` of an SQE: an in-flight table slot and its generation.
///
///     bits 63...32  generation of the slot when the operation was posted
///     bits 31...0   slot index; 0xFFFF_FFFF marks RingPort's internal operations, whose
///                   "generation" says which: 1 cancel, 3 close, 0x8000_0000 | n doorbell read n
///
/// A completion whose generation does not match its slot's is stale and is counted and
/// dropped, never dereferenced.
struct UserData: Hashable {
    var rawValue: UInt64

    init(rawValue: UInt64) {
        self.rawValue = rawValue
    }

    init(slot: UInt32, generation: UInt32) {
        rawValue = UInt64(generation) << 32 | UInt64(slot)
    }

    var slot: UInt32 { UInt32(truncatingIfNeeded: rawValue) }
    var generation: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) }

    /// Internal operations complete without reaching the application.
    var isInternal: Bool { slot == UInt32.max }

    /// An `ASYNC_CANCEL` request (its own completion says only whether it found the target).
    static let cancelRequest = UserData(slot: .max, generation: 1)
    /// A leader's read on the ring's doorbell eventfd, the `sequence`-th armed.
    static func doorbell(sequence: UInt32) -> UserData {
        UserData(slot: .max, generation: 0x8000_0000 | sequence)
    }

    /// For a doorbell read, its sequence number.
    var doorbellSequence: UInt32? {
        isInternal && generation & 0x8000_0000 != 0 ? generation & 0x7FFF_FFFF : nil
    }
    /// A `CLOSE` of a handle's descriptor.
    static let closeRequest = UserData(slot: .max, generation: 3)
}
