#if canImport(Glibc)
import Glibc
#endif

/// A POSIX thread of `ringport load` (an extra worker, or the monitor).
///
/// RingPort's own thread type is internal to it, so the tool starts its few threads with
/// `pthread_create` directly, as ``ShutdownSignals`` does.
///
/// Thread-safety: ``join()`` is called once, from the thread that started the thread; a detached
/// thread is never joined.
struct LoadThread {
    private let thread: pthread_t

    /// Starts a thread named `name` (at most 15 bytes) running `body`. The closure is owned by the
    /// new thread, which releases it when `body` returns. A `detached` thread's resources are
    /// freed when it ends; it cannot be joined.
    init(name: String, detached: Bool = false, body: @escaping @Sendable () -> Void) throws(LoadFailure) {
        final class Box {
            let name: String
            let body: @Sendable () -> Void
            init(name: String, body: @escaping @Sendable () -> Void) {
                self.name = name
                self.body = body
            }
        }
        let box = Unmanaged.passRetained(Box(name: name, body: body))
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
            nameCallingThread(box.name)
            box.body()
            return nil
        }, box.toOpaque())
        guard result == 0 else {
            box.release()
            throw LoadFailure("cannot start thread \(name): \(String(cString: strerror(result)))")
        }
        if detached { pthread_detach(thread) }
        self.thread = thread
    }

    /// Waits for the thread to finish.
    func join() {
        pthread_join(thread, nil)
    }
}

/// Names the calling thread (shown by `top -H`, `ps -L`; at most 15 bytes) through
/// `/proc/thread-self/comm`: glibc's `pthread_setname_np` does not import into Swift.
private func nameCallingThread(_ name: String) {
    let descriptor = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    close(descriptor)
}
