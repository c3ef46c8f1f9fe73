import CLiburing
import DequeModule
import Glibc

/// The threads that perform an ``EpollRing``'s positioned reads and writes of regular files,
/// which epoll cannot wait for (a regular file is always "ready"; its reads block on the disk).
///
/// Each job works on a duplicate of the descriptor (a ``SharedDuplicate``), so that closing the
/// original (as a handle's close does right after cancelling) never lets a job touch a
/// descriptor number the process has reused meanwhile. The jobs of one descriptor queued or
/// running at once share one duplicate, closed when the last of them ends: 512 queued reads of
/// one file hold one extra descriptor, not 512. A finished job lets its duplicate go, then posts
/// its completion to the ring's completion queue and wakes the ring's waiting thread.
///
/// ## Threads
/// `threadCount` threads, started with the first job; the queue and the set of running jobs are
/// guarded by `lock`. ``stop(waitingAtMost:)`` joins them, or, when one is still inside a read
/// or write (a file on a hung mount), leaves them to end on their own.
final class FileOperationPool: @unchecked Sendable {
    // @unchecked: the mutable state is guarded by `lock`; the rest is immutable.

    /// A duplicate of a file's descriptor, shared by the jobs of that descriptor and closed when
    /// the last of them lets it go (on the thread that let it go). The ring keeps a weak
    /// reference to find it for the next job.
    final class SharedDuplicate: Sendable {
        let descriptor: Int32

        /// Takes ownership of `descriptor`.
        init(owning descriptor: Int32) {
            self.descriptor = descriptor
        }

        deinit {
            SystemCall.close(descriptor)
        }
    }

    /// One read or write.
    struct Job {
        var userData: UInt64
        var isWrite: Bool
        /// The duplicate of the operation's descriptor the job works on.
        var file: SharedDuplicate
        var buffer: UnsafeMutableRawPointer?
        var count: Int
        /// The file offset; -1 (`UInt64.max` in the SQE) reads or writes at the file position.
        var offset: Int64
    }

    /// What ``cancel(userData:)`` found.
    enum CancelOutcome {
        /// The job had not started: it will not run (its completion is the caller's to post).
        case removed
        /// The job is running: it completes as it will (`EALREADY`, as io_uring answers).
        case running
        case notFound
    }

    private let completions: UserCompletionQueue
    private let wake: @Sendable () -> Void
    private let threadCount: Int
    private let lock = ConditionMutex()
    @exclusivity(unchecked) private var queue = Deque<Job>()
    @exclusivity(unchecked) private var running: [UInt64] = []
    @exclusivity(unchecked) private var threads: [PThread] = []
    @exclusivity(unchecked) private var stopping = false
    /// Threads started and not yet out of their loop.
    @exclusivity(unchecked) private var liveThreads = 0
    /// Set when ``stop(waitingAtMost:)`` gave up waiting: a job that ends afterwards posts no
    /// completion and wakes nobody (the ring's queue and eventfd may be gone).
    @exclusivity(unchecked) private var abandoned = false

    init(threadCount: Int, completions: UserCompletionQueue, wake: @escaping @Sendable () -> Void) {
        self.threadCount = threadCount
        self.completions = completions
        self.wake = wake
    }

    /// Queues a job (starting the threads the first time). Returns an error when no thread could
    /// be started; the job then was not queued.
    func enqueue(_ job: Job) -> Int32? {
        lock.withLock { () -> Int32? in
            if threads.isEmpty {
                for index in 0..<threadCount {
                    do throws(RingPortError) {
                        threads.append(try PThread(name: "ringport-file\(index)") { [self] in run() })
                        liveThreads += 1
                    } catch {
                        if threads.isEmpty { return -(error.errno?.rawValue ?? EAGAIN) }
                        break
                    }
                }
            }
            queue.append(job)
            lock.signal()
            return nil
        }
    }

    /// Removes the job of `userData` if it has not started.
    func cancel(userData: UInt64) -> CancelOutcome {
        lock.withLock {
            if let index = queue.firstIndex(where: { $0.userData == userData }) {
                // The job, and with it its reference to the duplicate, goes.
                queue.remove(at: index)
                return .removed
            }
            return running.contains(userData) ? .running : .notFound
        }
    }

    /// Stops the threads after the jobs already queued, and joins them if they end within
    /// `timeout`. Otherwise (a read or write stuck on a hung mount) it returns without them:
    /// they end on their own when their calls return, posting nothing and waking nobody. The
    /// memory such a job reads into or writes from must then stay valid: the ring keeps the
    /// contexts of operations that did not complete at its close.
    func stop(waitingAtMost timeout: Duration) {
        let (stopped, ended) = lock.withLock { () -> ([PThread], Bool) in
            stopping = true
            lock.broadcast()
            let deadline = MonotonicInstant.now.advanced(by: timeout)
            while liveThreads > 0 && MonotonicInstant.now < deadline {
                lock.wait(until: deadline)
            }
            if liveThreads > 0 { abandoned = true }
            defer { threads = [] }
            return (threads, liveThreads == 0)
        }
        for thread in stopped {
            if ended { thread.join() } else { thread.detach() }
        }
    }

    private func run() {
        lock.lock()
        while true {
            guard let job = queue.popFirst() else {
                if stopping { break }
                lock.wait()
                continue
            }
            let userData = job.userData
            running.append(userData)
            lock.unlock()
            // The job is consumed: its duplicate is let go (and closed if no other job holds
            // it) before the completion is posted.
            let result = Self.perform(consume job)
            lock.lock()
            if let index = running.firstIndex(of: userData) { running.remove(at: index) }
            if abandoned { break }
            // Under the lock, so that a stop that gives up waiting cannot close the ring's
            // eventfd between the check above and this wake-up.
            completions.post(userData: userData, result: result)
            wake()
        }
        liveThreads -= 1
        lock.broadcast()
        lock.unlock()
    }

    /// The read or write, retried when interrupted. Returns the byte count or a negated errno.
    private static func perform(_ job: consuming Job) -> Int32 {
        // `job` (and its reference to the duplicate) ends with this call, at the latest.
        let descriptor = job.file.descriptor
        while true {
            let result: Int
            switch (job.isWrite, job.offset < 0) {
            case (false, false): result = pread(descriptor, job.buffer, job.count, off_t(job.offset))
            case (false, true): result = read(descriptor, job.buffer, job.count)
            case (true, false): result = pwrite(descriptor, job.buffer, job.count, off_t(job.offset))
            case (true, true): result = write(descriptor, job.buffer, job.count)
            }
            if result >= 0 { return Int32(clamping: result) }
            if errno != EINTR { return -errno }
        }
    }
}
