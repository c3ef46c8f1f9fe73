import Glibc
import SystemPackage

/// Thin, typed wrappers over the system calls that open a regular file for positioned I/O
/// through a ``CompletionPort`` (``CompletionPort/read(_:into:range:atOffset:)``,
/// ``CompletionPort/write(_:from:range:atOffset:)``). Every failure throws a ``RingPortError``
/// (``RingPortError/Code/systemCallFailed``) naming the call and the `errno`.
///
/// Every descriptor returned is close-on-exec and owned by the caller until it is handed to
/// ``CompletionPort/associate(descriptor:peerAddress:userState:ring:)``, which takes any descriptor
/// (``CompletionPort/openFile(atPath:access:options:permissions:userState:)`` does both).
///
/// Stateless; safe to call from any thread.
public enum RegularFile {
    /// What a descriptor may do: the `O_ACCMODE` part of the `open(2)` flags. A value type,
    /// safe to pass between threads.
    public enum Access: Sendable {
        /// `O_RDONLY`: reads only; a write fails with `EBADF`.
        case readOnly
        /// `O_WRONLY`: writes only; a read fails with `EBADF`.
        case writeOnly
        /// `O_RDWR`: both.
        case readWrite

        var flags: Int32 {
            switch self {
            case .readOnly: O_RDONLY
            case .writeOnly: O_WRONLY
            case .readWrite: O_RDWR
            }
        }
    }

    /// How to open: the creation flags of `open(2)`. There is deliberately no `O_APPEND`: on
    /// Linux it makes every positioned write append, whatever its offset. A value type, safe to
    /// pass between threads.
    public struct Options: OptionSet, Sendable {
        /// The `O_*` bits.
        public let rawValue: Int32

        /// Options from `O_*` bits (passed to `open(2)` as they are).
        public init(rawValue: Int32) {
            self.rawValue = rawValue
        }

        /// `O_CREAT`: create the file when it does not exist (with the given permissions).
        public static let create = Options(rawValue: O_CREAT)
        /// `O_EXCL` (with ``create``): fail with `EEXIST` when the file exists.
        public static let exclusive = Options(rawValue: O_EXCL)
        /// `O_TRUNC`: empty the file when it is opened for writing.
        public static let truncate = Options(rawValue: O_TRUNC)
    }

    /// Opens the file at `path` (`open(2)` with `O_CLOEXEC`). The caller owns the descriptor.
    ///
    /// - Parameters:
    ///   - path: the file's path, absolute or relative to the working directory.
    ///   - access: whether the descriptor reads, writes or both.
    ///   - options: creation and truncation flags; none by default.
    ///   - permissions: the mode of a file ``Options/create`` creates (before the umask).
    /// - Returns: the new descriptor, close-on-exec.
    public static func open(
        atPath path: String, access: Access, options: Options = [], permissions: mode_t = 0o644
    ) throws(RingPortError) -> Int32 {
        let descriptor = Glibc.open(path, access.flags | options.rawValue | O_CLOEXEC, permissions)
        try SystemCall.check(descriptor, "open \(path)")
        return descriptor
    }

    /// The size of the file in bytes (`fstat`'s `st_size`).
    public static func size(of descriptor: Int32) throws(RingPortError) -> Int64 {
        var status = stat()
        try SystemCall.check(fstat(descriptor, &status), "fstat")
        return Int64(status.st_size)
    }
}
