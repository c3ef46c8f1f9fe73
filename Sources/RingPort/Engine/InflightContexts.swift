/// The contexts whose operations the kernel owns on one handle (unretained: each one's
/// in-flight record holds it), for cancelling them when the handle closes.
///
/// The first two are kept inline, since a connection rarely has more in flight than a receive
/// and a send: associating a descriptor allocates nothing for them. More go to an array. Each
/// context keeps its position (``IOContext/indexInHandle``) so that removing one is a swap
/// with the last.
///
/// Guarded by the owning ring's lock, like the rest of the handle's bookkeeping.
struct InflightContexts {
    private static let inlineCount = 2
    private var first: Unmanaged<IOContext>?
    private var second: Unmanaged<IOContext>?
    private var overflow = ContiguousArray<Unmanaged<IOContext>>()

    /// How many there are (positions `0..<count` are filled; no count is stored, for the
    /// handle's size).
    var count: Int {
        second == nil ? (first == nil ? 0 : 1) : Self.inlineCount + overflow.count
    }

    private subscript(position: Int) -> Unmanaged<IOContext> {
        get {
            switch position {
            case 0: first.unsafelyUnwrapped
            case 1: second.unsafelyUnwrapped
            default: overflow[position - Self.inlineCount]
            }
        }
        set {
            switch position {
            case 0: first = newValue
            case 1: second = newValue
            default: overflow[position - Self.inlineCount] = newValue
            }
        }
    }

    /// Adds `context` (which is not in the set) and records its position in it.
    mutating func append(_ context: Unmanaged<IOContext>) {
        let position = count
        if position < Self.inlineCount {
            self[position] = context
        } else {
            overflow.append(context)
        }
        context._withUnsafeGuaranteedRef { $0.indexInHandle = Int32(position) }
    }

    /// Removes `context` (which is in the set): the last one takes its position.
    mutating func remove(_ context: IOContext) {
        let position = Int(context.indexInHandle)
        let lastPosition = count - 1
        let last = self[lastPosition]
        if position != lastPosition {
            self[position] = last
            last._withUnsafeGuaranteedRef { $0.indexInHandle = Int32(position) }
        }
        switch lastPosition {
        case 0: first = nil
        case 1: second = nil
        default: overflow.removeLast()
        }
        context.indexInHandle = -1
    }

    /// Calls `body` with each context, in no particular order.
    func forEach<Failure: Error>(_ body: (IOContext) throws(Failure) -> Void) throws(Failure) {
        for position in 0..<count {
            try body(self[position].takeUnretainedValue())
        }
    }
}
