import CLiburing
import Glibc
import SystemPackage

/// A ring of provided buffers registered with one io_uring instance (`IORING_REGISTER_PBUF_RING`):
/// a multishot receive takes a free buffer from it for every completion, so an idle connection
/// holds no receive buffer at all.
///
/// liburing 2.3 has no `io_uring_setup_buf_ring`, so the ring is set up by hand: the entries live
/// in page-aligned anonymous memory mapped here, initialised with `io_uring_buf_ring_init`, and
/// registered with `io_uring_register_buf_ring`.
///
/// Thread-safety: none of its own; ``recycleLocked(_:)`` and the buffer accounting are guarded by
/// the owning ``Ring``'s lock (which is why their dynamic exclusivity checks are off). The kernel
/// reads the entries and writes the buffers.
///
/// Ownership: the entries and the buffers are allocated here and freed in `deinit`, which the
/// ring runs only after the io_uring instance is gone (so the kernel no longer uses them).
final class ProvidedBufferRing {
    /// The buffer group ID that SQEs name (`buf_group`).
    let groupID: UInt16
    /// The size of each buffer.
    let bufferSize: Int
    /// The number of buffers (a power of two).
    let count: Int
    private let entries: UnsafeMutableRawPointer
    private let entriesByteCount: Int
    private let buffers: UnsafeMutableRawPointer
    private let mask: Int32
    /// Buffers handed to the application and not recycled yet (guarded by the ring's lock).
    @exclusivity(unchecked) private(set) var outstanding = 0
    /// Per buffer, whether the application holds it (guarded by the ring's lock): plain memory,
    /// where an array's every write checked its storage's uniqueness in the standard library.
    private let isHeldByApplication: UnsafeMutablePointer<Bool>

    /// Maps, initialises and registers a ring of `count` buffers of `bufferSize` bytes.
    ///
    /// - Throws: ``RingPortError`` (`EINVAL` before Linux 5.19, which lacks buffer rings).
    /// - Parameter registrationFlags: `io_uring_buf_reg.flags` (e.g. `IOU_PBUF_RING_INC`, which
    ///   only the feature probe tries).
    init(
        ring: IOURing, groupID: UInt16, count: Int, bufferSize: Int, registrationFlags: UInt16 = 0
    ) throws(RingPortError) {
        precondition(
            count > 0 && count <= 32768 && count & (count - 1) == 0, "buffer count must be a power of two up to 32768")
        precondition(bufferSize > 0 && bufferSize <= Int(UInt32.max))
        self.groupID = groupID
        self.bufferSize = bufferSize
        self.count = count
        mask = io_uring_buf_ring_mask(UInt32(count))
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        entriesByteCount = (count * MemoryLayout<io_uring_buf>.stride + pageSize - 1) / pageSize * pageSize
        guard let mapped = mmap(nil, entriesByteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            mapped != MAP_FAILED
        else {
            throw RingPortError(
                .systemCallFailed, operation: "mmap provided buffer ring", errno: Errno(rawValue: Glibc.errno))
        }
        entries = mapped
        buffers = .allocate(byteCount: count * bufferSize, alignment: pageSize)
        isHeldByApplication = .allocate(capacity: count)
        isHeldByApplication.initialize(repeating: false, count: count)

        let bufferRing = entries.assumingMemoryBound(to: io_uring_buf_ring.self)
        io_uring_buf_ring_init(bufferRing)
        var registration = io_uring_buf_reg()
        registration.ring_addr = UInt64(UInt(bitPattern: entries))
        registration.ring_entries = UInt32(count)
        registration.bgid = groupID
        registration.pad = registrationFlags  // `flags` in kernels after 6.1
        let result = ring.registerBufferRing(&registration)
        guard result == 0 else {
            // Every stored property is set: a class initializer that throws from here on still
            // runs `deinit`, which unmaps and frees (doing it here too freed everything twice).
            throw RingPortError(
                .systemCallFailed, operation: "io_uring_register_buf_ring(group: \(groupID), entries: \(count))",
                errno: Errno(rawValue: -result))
        }
        for index in 0..<count {
            io_uring_buf_ring_add(
                bufferRing, buffers + index * bufferSize, UInt32(bufferSize), UInt16(index), mask, Int32(index))
        }
        io_uring_buf_ring_advance(bufferRing, Int32(count))
    }

    deinit {
        munmap(entries, entriesByteCount)
        buffers.deallocate()
        isHeldByApplication.deallocate()
    }

    /// The memory of buffer `id`.
    func bytes(of id: UInt16, count byteCount: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: buffers + Int(id) * bufferSize, count: byteCount)
    }

    /// The kernel filled buffer `id`; the application owns it until ``recycleLocked(_:)``.
    func handOutLocked(_ id: UInt16) {
        precondition(!isHeldByApplication[Int(id)], "provided buffer \(id) handed out twice")
        isHeldByApplication[Int(id)] = true
        outstanding += 1
    }

    /// Gives buffer `id` back to the kernel.
    func recycleLocked(_ id: UInt16) {
        precondition(isHeldByApplication[Int(id)], "provided buffer \(id) recycled twice")
        isHeldByApplication[Int(id)] = false
        outstanding -= 1
        let bufferRing = entries.assumingMemoryBound(to: io_uring_buf_ring.self)
        io_uring_buf_ring_add(bufferRing, buffers + Int(id) * bufferSize, UInt32(bufferSize), id, mask, 0)
        io_uring_buf_ring_advance(bufferRing, 1)
    }
}
