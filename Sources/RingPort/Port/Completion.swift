import CLiburing
import Glibc
import SystemPackage

/// One finished operation, as a worker takes it off the port: what "get queued completion
/// status" returns (bytes transferred, completion key, per-I/O context, error).
///
/// A value type; safe to pass between threads together with the ownership of its context.
public struct Completion: Sendable, CustomStringConvertible {
    /// The operation tag that was posted.
    public let operation: IOOperation
    /// The kernel's result: bytes transferred, an accepted descriptor, or a negated errno.
    /// For ``IOOperation/user`` completions, the bytes given to
    /// ``CompletionPort/post(bytesTransferred:handle:context:value:)``.
    public let result: Int32
    /// The CQE flags (`IORING_CQE_F_*`).
    public let flags: UInt32
    /// The completion key: the handle the operation was posted on, if any.
    public let handle: IOHandle?
    /// The per-I/O context the operation was posted with, if any. The application owns it again.
    public let context: IOContext?
    /// For ``IOOperation/user`` completions, the value given to
    /// ``CompletionPort/post(bytesTransferred:handle:context:value:)``.
    public let userValue: UInt64
    /// For a multishot receive that delivered bytes: the provided buffer holding them, owned by
    /// the application until it calls ``ReceivedBuffer/release()``.
    public let receivedBuffer: ReceivedBuffer?

    init(
        operation: IOOperation, result: Int32, flags: UInt32, handle: IOHandle?, context: IOContext?,
        userValue: UInt64, receivedBuffer: ReceivedBuffer? = nil
    ) {
        self.operation = operation
        self.result = result
        self.flags = flags
        self.handle = handle
        self.context = context
        self.userValue = userValue
        self.receivedBuffer = receivedBuffer
    }

    /// The error, or nil on success. A timeout that expired is a success; one that was
    /// cancelled reports `ECANCELED`.
    public var error: Errno? {
        guard result < 0 else { return nil }
        if operation == .timeout && result == -ETIME { return nil }
        return Errno(rawValue: -result)
    }

    /// Whether the operation was cancelled (``CompletionPort/cancel(_:)``, a closed handle, or
    /// port shutdown) before it could finish.
    public var isCancelled: Bool {
        result == -ECANCELED
    }

    /// Bytes transferred by a read or write (0 on error or end of stream), or the value posted
    /// with a user completion.
    public var bytesTransferred: Int {
        result > 0 ? Int(result) : 0
    }

    /// Whether more completions of the same operation follow (a multishot operation whose CQE had
    /// `IORING_CQE_F_MORE`). The context then stays owned by the port.
    public var hasMore: Bool {
        flags & IORING_CQE_F_MORE != 0
    }

    /// The new connection's descriptor, for a successful accept. The application owns it:
    /// associate it with a port or close it.
    public var acceptedDescriptor: Int32? {
        operation == .accept && result >= 0 ? result : nil
    }

    /// Closes the accepted descriptor or releases the received buffer the completion carries, if
    /// any: what a handler that has no use for the completion (not one of its operations) does
    /// so that nothing leaks. Package access: the async and SwiftNIO layers' fallback.
    package func discardCarriedResources() {
        if let descriptor = acceptedDescriptor { SystemCall.close(descriptor) }
        receivedBuffer?.release()
    }

    /// The operation, the result (with the error's name when it failed) and the handle's
    /// ``IOHandle/ID``, for logs.
    public var description: String {
        var text = "Completion(\(operation), result: \(result)"
        if let error { text += " (\(error))" }
        if let handle { text += ", handle: \(handle.id)" }
        return text + ")"
    }
}
