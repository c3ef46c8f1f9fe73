import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Checks of plain system calls, shared by the typed wrappers (``TCPSocket``, ``UDPSocket``,
/// ``RegularFile``). Stateless; safe to call from any thread.
enum SystemCall {
    /// Throws ``RingPortError/Code/systemCallFailed`` with the thread's `errno` when `result` is
    /// negative. Call it right after the system call, before anything else can change `errno`.
    static func check(_ result: Int32, _ operation: @autoclosure () -> String) throws(RingPortError) {
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
