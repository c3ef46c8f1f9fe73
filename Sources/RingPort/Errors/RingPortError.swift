import SystemPackage

/// An error reported by RingPort: what failed, the operation that was being done, and the
/// `errno` the kernel returned, if any.
///
/// Match on ``code`` to handle a kind of failure; print the error (``description``) to tell a
/// person what happened. `RingPortError` is a value type and safe to pass between threads.
public struct RingPortError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of failure.
    public var code: Code
    /// What RingPort was doing, e.g. `"io_uring_enter"` or `"bind 127.0.0.1:8888"`.
    public var operation: String
    /// The error the kernel or libc returned, when there was one.
    public var errno: Errno?
    /// Why io_uring is unavailable, when ``code`` is ``Code/ioURingUnavailable``.
    public var unavailability: IOURingUnavailability?

    /// Creates an error.
    public init(_ code: Code, operation: String, errno: Errno? = nil, unavailability: IOURingUnavailability? = nil) {
        self.code = code
        self.operation = operation
        self.errno = errno
        self.unavailability = unavailability
    }

    /// A readable description: the failure, the operation, the errno, and for io_uring
    /// set-up failures the cause and the fix.
    public var description: String {
        var text = "\(code): \(operation)"
        if let errno {
            text += " failed: \(errno) (errno \(errno.rawValue))"
        }
        if let unavailability {
            text += ". \(unavailability.explanation) Fix: \(unavailability.fix)"
        }
        return text
    }
}

extension RingPortError {
    /// A kind of RingPort failure. New codes may be added; match the ones you handle and keep a
    /// default case.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: Hashable, Sendable {
            case ioURingUnavailable
            case kernelTooOld
            case submissionFailed
            case waitFailed
            case handleClosed
            case contextInFlight
            case invalidArgument
            case portClosed
            case systemCallFailed
            case unsupported
        }

        private let value: Value

        /// io_uring could not be set up at all (see ``RingPortError/unavailability``).
        public static let ioURingUnavailable = Code(value: .ioURingUnavailable)
        /// The kernel has io_uring but lacks a feature RingPort needs.
        public static let kernelTooOld = Code(value: .kernelTooOld)
        /// The kernel refused submission queue entries (`io_uring_enter` failed).
        public static let submissionFailed = Code(value: .submissionFailed)
        /// Waiting for completions failed (`io_uring_enter` with `GETEVENTS` failed).
        public static let waitFailed = Code(value: .waitFailed)
        /// An operation was posted on a handle that has been closed.
        public static let handleClosed = Code(value: .handleClosed)
        /// A per-I/O context was posted while its previous operation is still in flight.
        public static let contextInFlight = Code(value: .contextInFlight)
        /// An argument was out of range (a buffer range, a ring size, a worker count).
        public static let invalidArgument = Code(value: .invalidArgument)
        /// The completion port has been closed.
        public static let portClosed = Code(value: .portClosed)
        /// A plain system call (socket, bind, listen, fcntl, ...) failed.
        public static let systemCallFailed = Code(value: .systemCallFailed)
        /// The kernel (or the port's configuration) lacks what the operation needs, e.g. a
        /// multishot receive without provided buffer rings. See ``IOURingFeatures``.
        public static let unsupported = Code(value: .unsupported)

        /// A short phrase naming the kind of failure, e.g. "handle closed".
        public var description: String {
            switch value {
            case .ioURingUnavailable: "io_uring unavailable"
            case .kernelTooOld: "kernel too old"
            case .submissionFailed: "submission failed"
            case .waitFailed: "waiting for completions failed"
            case .handleClosed: "handle closed"
            case .contextInFlight: "context in flight"
            case .invalidArgument: "invalid argument"
            case .portClosed: "completion port closed"
            case .systemCallFailed: "system call failed"
            case .unsupported: "unsupported"
            }
        }
    }
}
