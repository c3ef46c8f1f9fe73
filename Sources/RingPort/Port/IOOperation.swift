/// The operation tag of a per-I/O context: what was posted, and so what just completed.
///
/// The first three keep the raw values of the classic completion-port server
/// (`OP_READ = 1`, `OP_WRITE = 2`, `OP_ACCEPT = 3`). A value type, safe to pass between threads.
public struct IOOperation: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The tag's number (1, 2 and 3 are the classic `OP_READ`, `OP_WRITE` and `OP_ACCEPT`).
    public let rawValue: UInt8

    /// The tag with this number. RingPort posts only the tags declared here; another number is
    /// a tag no operation carries.
    @inlinable
    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// A receive into the context's buffer (`OP_READ`; io_uring `RECV`), or a positioned read of a
    /// file (`ReadFile`; io_uring `READ`).
    @inlinable public static var read: IOOperation { IOOperation(rawValue: 1) }
    /// A send from the context's buffer (`OP_WRITE`; io_uring `SEND`), or a positioned write to a
    /// file (`WriteFile`; io_uring `WRITE`).
    @inlinable public static var write: IOOperation { IOOperation(rawValue: 2) }
    /// An accept on a listening socket (`OP_ACCEPT`; io_uring `ACCEPT`).
    @inlinable public static var accept: IOOperation { IOOperation(rawValue: 3) }
    /// An outbound connect (io_uring `CONNECT`).
    @inlinable public static var connect: IOOperation { IOOperation(rawValue: 4) }
    /// An asynchronous close of a handle's descriptor (io_uring `CLOSE`).
    @inlinable public static var close: IOOperation { IOOperation(rawValue: 5) }
    /// A timer (io_uring `TIMEOUT`).
    @inlinable public static var timeout: IOOperation { IOOperation(rawValue: 6) }
    /// A completion posted by the application (`PostQueuedCompletionStatus`).
    @inlinable public static var user: IOOperation { IOOperation(rawValue: 7) }
    /// A no-op round trip through the kernel (io_uring `NOP`).
    @inlinable public static var nop: IOOperation { IOOperation(rawValue: 8) }
    /// A datagram received into the context's buffer with its sender's address (`WSARecvFrom`;
    /// io_uring `RECVMSG`).
    @inlinable public static var receiveMessage: IOOperation { IOOperation(rawValue: 9) }
    /// A datagram sent from the context's buffer to an address (`WSASendTo`; io_uring `SENDMSG`).
    @inlinable public static var sendMessage: IOOperation { IOOperation(rawValue: 10) }

    /// The tag's name, e.g. `read`, or `operation(N)` for a number without one.
    public var description: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .accept: "accept"
        case .connect: "connect"
        case .close: "close"
        case .timeout: "timeout"
        case .user: "user"
        case .nop: "nop"
        case .receiveMessage: "receiveMessage"
        case .sendMessage: "sendMessage"
        default: "operation(\(rawValue))"
        }
    }
}
