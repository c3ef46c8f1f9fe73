import CLiburing
import Glibc

/// Positioned file I/O: reads and writes at an offset, like `ReadFile` / `WriteFile` with an
/// `OVERLAPPED` offset on a file associated with a completion port.
///
/// A file is associated like a socket — ``associate(descriptor:peerAddress:userState:ring:)`` takes
/// any descriptor — or opened and associated in one step with
/// ``openFile(atPath:access:options:permissions:userState:)``. Each operation names its own offset, so
/// several may be in flight on one file at once and the file position is neither used nor
/// moved. The kernel does buffered file I/O that would block on its own worker threads, so a
/// read that misses the page cache does not stall the ring.
///
/// Posting, ownership and errors follow the rules of the other operations (see
/// ``read(_:into:range:)``): each method returns once the operation is queued; the context and
/// its buffer belong to the port from the call until the operation's completion is dequeued,
/// and must not be touched meanwhile. Completions are tagged ``IOOperation/read`` and
/// ``IOOperation/write``. No scratch memory is needed: the offset travels in the submission.
///
/// All methods are thread-safe.
extension CompletionPort {
    /// Opens the file at `path` (close-on-exec; see ``RegularFile/open(atPath:access:options:permissions:)``)
    /// and associates it with the port. The returned handle owns the descriptor: ``close(_:)``
    /// closes it. Opening is a plain, blocking `open(2)` on the calling thread.
    ///
    /// - Parameters:
    ///   - path: the file's path.
    ///   - access: whether the descriptor reads, writes or both.
    ///   - options: creation and truncation flags; none by default.
    ///   - permissions: the mode of a file ``RegularFile/Options/create`` creates (before the
    ///     umask).
    ///   - userState: the application's per-handle state (``IOHandle/userState``).
    /// - Throws: ``RingPortError/Code/systemCallFailed`` with the `errno` when the file cannot
    ///   be opened; ``RingPortError/Code/portClosed`` when the port is closed (the descriptor
    ///   is closed again).
    public func openFile(
        atPath path: String, access: RegularFile.Access, options: RegularFile.Options = [],
        permissions: mode_t = 0o644, userState: (any Sendable)? = nil
    ) throws(RingPortError) -> IOHandle {
        let descriptor = try RegularFile.open(atPath: path, access: access, options: options, permissions: permissions)
        do {
            return try associate(descriptor: descriptor, userState: userState)
        } catch {
            SystemCall.close(descriptor)
            throw error
        }
    }

    /// Posts a read of the file at byte `offset` into `range` of `context`'s buffer
    /// (``IOOperation/read``; io_uring `READ`, like `pread`).
    ///
    /// The completion's ``Completion/bytesTransferred`` is how many bytes were read: fewer than
    /// asked when the file ends inside the range, 0 when `offset` is at or past its end.
    ///
    /// - Parameters:
    ///   - handle: the file's handle.
    ///   - context: the context whose buffer receives the bytes; the port owns it until the
    ///     completion is dequeued.
    ///   - range: where in the buffer to read into; the whole buffer by default.
    ///   - offset: the file offset to read from, at least 0.
    /// - Throws: ``RingPortError/Code/invalidArgument`` for a negative offset, and as the other
    ///   posting methods; nothing is queued then.
    public func read(
        _ handle: IOHandle, into context: IOContext, range: Range<Int>? = nil, atOffset offset: Int64
    ) throws(RingPortError) {
        let range = range ?? 0..<context.capacity
        try validate(range, in: context, operation: .read)
        try validate(offset, operation: .read)
        let descriptor = handle.descriptor
        let buffer = context.bytes + range.lowerBound
        try post(onRing: handle.id.ring, .read, handle: handle, context: context) { entry in
            // The kernel writes into the context's buffer, which the in-flight table keeps alive
            // until the completion.
            io_uring_prep_read(entry, descriptor, buffer, UInt32(range.count), UInt64(offset))
        }
    }

    /// Posts a write of the bytes in `range` of `context`'s buffer to the file at byte
    /// `offset` (``IOOperation/write``; io_uring `WRITE`, like `pwrite`). Writing past the end
    /// extends the file (a gap reads as zeros).
    ///
    /// The completion's ``Completion/bytesTransferred`` is how many bytes were written; it may
    /// be fewer than asked (e.g. the disk filled up): post the rest again at the offset that
    /// follows.
    ///
    /// - Parameters:
    ///   - handle: the file's handle.
    ///   - context: the context whose buffer holds the bytes; the port owns it until the
    ///     completion is dequeued.
    ///   - range: the bytes of the buffer to write.
    ///   - offset: the file offset to write at, at least 0.
    /// - Throws: as ``read(_:into:range:atOffset:)``.
    public func write(
        _ handle: IOHandle, from context: IOContext, range: Range<Int>, atOffset offset: Int64
    ) throws(RingPortError) {
        try validate(range, in: context, operation: .write)
        try validate(offset, operation: .write)
        let descriptor = handle.descriptor
        let buffer = context.bytes + range.lowerBound
        try post(onRing: handle.id.ring, .write, handle: handle, context: context) { entry in
            // The kernel reads from the context's buffer, which the in-flight table keeps alive
            // until the completion.
            io_uring_prep_write(entry, descriptor, buffer, UInt32(range.count), UInt64(offset))
        }
    }

    private func validate(_ offset: Int64, operation: IOOperation) throws(RingPortError) {
        guard offset >= 0 else {
            throw RingPortError(.invalidArgument, operation: "\(operation) at file offset \(offset)")
        }
    }
}
