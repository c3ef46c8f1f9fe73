import Glibc

/// Memory whose first touch, by any thread and from the kernel too (a `read` copying into it),
/// blocks that thread until the test lets it go: the page-aligned interior of a buffer,
/// registered with a userfaultfd. A deterministic way to hold a thread inside a system call.
///
/// Needs `/dev/userfaultfd` (Linux 6.1) and the right to open it (root here); ``isAvailable``
/// says whether this process can. Not thread-safe: one test drives it.
package final class PageFaultTrap {
    // From <linux/userfaultfd.h>: the ioctls and the layouts they take.
    private static let newDescriptorRequest: UInt = 0xAA00  // USERFAULTFD_IOC_NEW
    private static let apiRequest: UInt = 0xC018_AA3F  // UFFDIO_API, struct uffdio_api (24 bytes)
    private static let registerRequest: UInt = 0xC020_AA00  // UFFDIO_REGISTER, struct uffdio_register (32)
    private static let zeroPageRequest: UInt = 0xC020_AA04  // UFFDIO_ZEROPAGE, struct uffdio_zeropage (32)
    private static let api: UInt64 = 0xAA  // UFFD_API
    private static let registerModeMissing: UInt64 = 1  // UFFDIO_REGISTER_MODE_MISSING
    private static let pageFaultEvent: UInt8 = 0x12  // UFFD_EVENT_PAGEFAULT
    private static let messageSize = 32  // struct uffd_msg

    /// A step of setting the trap that failed, and its errno.
    package struct Failure: Error {
        package var step: String
        package var errno: Int32
    }

    private let descriptor: Int32
    /// Where the trapped pages start, as an offset into the buffer given to `init`.
    package let trappedRange: Range<Int>
    private let start: UnsafeMutableRawPointer
    private var faultsSeen = 0
    private var released = false

    /// Whether a trap can be set in this process.
    package static var isAvailable: Bool {
        guard let descriptor = try? makeDescriptor() else { return false }
        close(descriptor)
        return true
    }

    /// Traps the whole pages inside `buffer` (at least one must fit), which must be anonymous
    /// private memory (a large heap allocation is): their contents are discarded first.
    package init(_ buffer: UnsafeMutableRawBufferPointer) throws(PageFaultTrap.Failure) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let base = Int(bitPattern: buffer.baseAddress!)
        let first = (base + page - 1) / page * page
        let end = (base + buffer.count) / page * page
        precondition(end > first, "PageFaultTrap: no whole page in a buffer of \(buffer.count) bytes")
        start = UnsafeMutableRawPointer(bitPattern: first)!
        trappedRange = (first - base)..<(end - base)
        descriptor = try Self.makeDescriptor()
        guard madvise(start, end - first, MADV_DONTNEED) == 0 else {
            let error = Failure(step: "madvise(MADV_DONTNEED)", errno: errno)
            close(descriptor)
            throw error
        }
        // struct uffdio_register: the range (start, length), the mode, and the ioctls (out).
        var register: (UInt64, UInt64, UInt64, UInt64) = (
            UInt64(first), UInt64(end - first), Self.registerModeMissing, 0
        )
        guard ioctl(descriptor, Self.registerRequest, &register) == 0 else {
            let error = Failure(step: "UFFDIO_REGISTER", errno: errno)
            close(descriptor)
            throw error
        }
    }

    deinit {
        release()
        close(descriptor)
    }

    private static func makeDescriptor() throws(PageFaultTrap.Failure) -> Int32 {
        let device = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC)
        guard device >= 0 else { throw Failure(step: "open /dev/userfaultfd", errno: errno) }
        defer { close(device) }
        let descriptor = ioctl(device, newDescriptorRequest, O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else { throw Failure(step: "USERFAULTFD_IOC_NEW", errno: errno) }
        // struct uffdio_api: the API version in, the features and ioctls out.
        var handshake: (UInt64, UInt64, UInt64) = (api, 0, 0)
        guard ioctl(descriptor, apiRequest, &handshake) == 0 else {
            let error = Failure(step: "UFFDIO_API", errno: errno)
            close(descriptor)
            throw error
        }
        return descriptor
    }

    /// Waits until `count` touches of the trapped pages (since the trap was set) are blocked,
    /// at most `timeout`. Returns whether they are.
    package func waitForBlockedTouches(_ count: Int, timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var message = [UInt8](repeating: 0, count: Self.messageSize)
        while faultsSeen < count {
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { return false }
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(clamping: left.components.seconds * 1000 + 1)
            guard poll(&poller, 1, milliseconds) > 0 else { continue }
            let got = message.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, Self.messageSize) }
            if got == Self.messageSize && message[0] == Self.pageFaultEvent { faultsSeen += 1 }
        }
        return true
    }

    /// Maps zero pages over the trapped range, which wakes every blocked touch (each then goes
    /// on as if the memory had been there). Called by `deinit` if the test did not.
    package func release() {
        guard !released else { return }
        released = true
        // struct uffdio_zeropage: the range, the mode, and the bytes mapped (out).
        var zeroPage: (UInt64, UInt64, UInt64, Int64) = (
            UInt64(UInt(bitPattern: start)), UInt64(trappedRange.count), 0, 0
        )
        let result = ioctl(descriptor, Self.zeroPageRequest, &zeroPage)
        precondition(result == 0 || errno == EEXIST, "UFFDIO_ZEROPAGE failed: errno \(errno)")
    }
}
