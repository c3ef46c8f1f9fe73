import Glibc
import SystemPackage

/// The package's one door to plain system calls that are not io_uring operations: each checks
/// its result. Shared by the typed wrappers (``TCPSocket``, ``UDPSocket``, ``RegularFile``), the
/// engine and the other modules (package access). Stateless; safe to call from any thread.
package enum SystemCall {
    /// Closes `descriptor`, which the caller owns.
    ///
    /// `EINTR` is not retried: Linux has released the descriptor by then, and a second close
    /// could close a descriptor another thread was just given. `EBADF` means the caller closed
    /// something it did not own (or closed it twice): a bug, which traps in debug builds and is
    /// ignored in release builds. Other errors (`EIO` from some file systems) are returned; for a
    /// socket there are none.
    @discardableResult
    package static func close(_ descriptor: Int32) -> Errno? {
        guard Glibc.close(descriptor) < 0 else { return nil }
        let error = Errno(rawValue: Glibc.errno)
        assert(error != .badFileDescriptor, "close(\(descriptor)): EBADF, a descriptor closed twice or never owned")
        return error == .interrupted ? nil : error
    }

    /// Adds 1 to the counter of the eventfd `descriptor` (a doorbell). The write cannot block or
    /// fail on a valid eventfd whose counter is far from overflowing; a failure is a bug, which
    /// traps in debug builds.
    package static func signalEventCounter(_ descriptor: Int32) {
        var one: UInt64 = 1
        let written = Glibc.write(descriptor, &one, MemoryLayout<UInt64>.size)
        assert(written == MemoryLayout<UInt64>.size, "write to eventfd \(descriptor): errno \(Glibc.errno)")
    }

    /// Throws ``RingPortError/Code/systemCallFailed`` with the thread's `errno` when `result` is
    /// negative. Call it right after the system call, before anything else can change `errno`.
    package static func check(_ result: Int32, _ operation: @autoclosure () -> String) throws(RingPortError) {
        if result < 0 {
            throw RingPortError(.systemCallFailed, operation: operation(), errno: Errno(rawValue: Glibc.errno))
        }
    }

    /// The address `call` (`getsockname` or `getpeername`) reports for a socket.
    static func socketAddress(
        of descriptor: Int32, _ name: String,
        _ call: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32
    ) throws(RingPortError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(descriptor, $0, &length) }
        }
        try check(result, name)
        guard let address = SocketAddress(storage: storage, length: length) else {
            throw RingPortError(.invalidArgument, operation: "\(name): not an IP socket")
        }
        return address
    }
}
