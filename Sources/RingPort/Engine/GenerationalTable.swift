/// A table of entries addressed by slot + generation.
///
/// A slot's generation changes every time its entry is removed, so an address held past the
/// entry's removal (a stale completion, a handle used after close) no longer matches and is
/// detected instead of reaching whatever took the slot next. Slots are reused (LIFO), so the
/// table stops growing once it holds as many entries as were ever alive at once: steady state
/// allocates nothing.
///
/// Thread-safety: none; the owner (a ``Ring``) guards it with its lock.
struct GenerationalTable<Element> {
    private struct Entry {
        // The element first: a small generation then fits in what would be its tail padding.
        var element: Element?
        var generation: UInt32
    }

    private var entries: [Entry] = []
    /// Where `entries` keeps its elements, for ``addressForPrefetch(slot:)`` only: read without touching
    /// the array (taking the address per call retained and released its storage). Refreshed
    /// when an append may have moved the elements; a stale address would be harmless anyway (a
    /// prefetch never faults).
    private var entriesAddress: UnsafeRawPointer?
    private var freeSlots: [UInt32] = []
    /// The number of live entries.
    private(set) var count = 0

    /// The largest slot number the table hands out; `UInt32.max` is kept for internal use.
    static var maximumSlot: UInt32 { UInt32.max - 1 }

    init(reservingCapacity capacity: Int = 0) {
        entries.reserveCapacity(capacity)
        freeSlots.reserveCapacity(capacity)
    }

    /// Stores `element` and returns its address.
    mutating func insert(_ element: Element?) -> (slot: UInt32, generation: UInt32) {
        count += 1
        if let slot = freeSlots.popLast() {
            entries[Int(slot)].element = element
            return (slot, entries[Int(slot)].generation)
        }
        precondition(entries.count <= Int(Self.maximumSlot), "generational table is full")
        entries.append(Entry(element: element, generation: 1))
        entriesAddress = entries.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
        return (UInt32(entries.count - 1), 1)
    }

    /// Stores the element `make` builds from its address, and returns the address.
    mutating func insert(
        making make: (_ slot: UInt32, _ generation: UInt32) -> Element
    ) -> (slot: UInt32, generation: UInt32) {
        let address = insert(nil)
        entries[Int(address.slot)].element = make(address.slot, address.generation)
        return address
    }

    /// The current generation of `slot`.
    func generation(of slot: UInt32) -> UInt32 {
        entries[Int(slot)].generation
    }

    /// Whether `slot` holds a live entry of `generation`.
    func contains(slot: UInt32, generation: UInt32) -> Bool {
        Int(slot) < entries.count && entries[Int(slot)].generation == generation && entries[Int(slot)].element != nil
    }

    /// The element at `slot`, or nil (for a look that must not trap on a stale slot).
    @inline(__always)
    func elementIfPresent(at slot: UInt32) -> Element? {
        Int(slot) < entries.count ? entries[Int(slot)].element : nil
    }

    /// Where the entry at `slot` lies, to prefetch it (nil when there is none). The caller
    /// prefetches after this returns: a call into C while the table is borrowed from its owner
    /// made the compiler copy the table, retaining its two arrays.
    @inline(__always)
    func addressForPrefetch(slot: UInt32) -> UnsafeRawPointer? {
        guard let base = entriesAddress, Int(slot) < entries.count else { return nil }
        return base + Int(slot) * MemoryLayout<Entry>.stride
    }

    /// The live entry at `slot`. The slot must hold one.
    subscript(slot: UInt32) -> Element {
        get { entries[Int(slot)].element! }
        _modify {
            yield &entries[Int(slot)].element!
        }
    }

    /// Removes and returns the entry at `slot`, retiring its generation.
    mutating func remove(slot: UInt32) -> Element {
        let index = Int(slot)
        let element = entries[index].element.take()!
        entries[index].generation &+= 1
        freeSlots.append(slot)
        count -= 1
        return element
    }

    /// The slots of every live entry.
    var liveSlots: [UInt32] {
        entries.indices.compactMap { entries[$0].element == nil ? nil : UInt32($0) }
    }
}
