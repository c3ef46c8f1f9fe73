import CLiburing
import Glibc

/// What the scheduler says about one thread of this process: how long it has run and how long it
/// has waited, runnable, for a CPU (`/proc/self/task/TID/schedstat`: `sum_exec_runtime`,
/// `run_delay`). Two readings tell a thread that is blocked (neither grew: it slept in a system
/// call, on a futex, on disk) from one that is runnable (it ran, or it waited for a CPU while
/// another thread — the load client on a shared core — had it).
///
/// The file stays open; each ``read()`` is one `pread` (about 0.7 µs here) and returns fresh
/// values. Reading another thread's file needs nothing but this process's own `/proc`.
///
/// Thread-safety: none; the owner (a ring's ``RingLeadership``) reads it under its lock.
final class ThreadSchedule {
    /// One reading.
    struct Reading {
        /// Nanoseconds the thread has run.
        var running: UInt64
        /// Nanoseconds the thread has waited, runnable, for a CPU.
        var waiting: UInt64
        /// When it was read.
        var at: MonotonicInstant
    }

    /// The thread's kernel ID.
    let threadID: Int32
    private let descriptor: Int32

    /// Opens the schedstat file of thread `threadID`; nil when it cannot be read (no `/proc`,
    /// or a kernel without `CONFIG_SCHED_INFO`).
    convenience init?(threadID: Int32) {
        self.init(threadID: threadID, statisticsPath: "/proc/self/task/\(threadID)/schedstat")
    }

    /// Opens `statisticsPath` as thread `threadID`'s schedstat file (a test seam); nil when it
    /// cannot be opened or read.
    init?(threadID: Int32, statisticsPath: String) {
        let descriptor = open(statisticsPath, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        self.threadID = threadID
        self.descriptor = descriptor
        // Every stored property is set: returning nil from here on still runs `deinit`, which
        // closes the file (closing it here too closed the number twice, by then perhaps another
        // thread's new socket).
        guard read() != nil else { return nil }
    }

    deinit {
        SystemCall.close(descriptor)
    }

    /// The calling thread's kernel ID.
    static var currentThreadID: Int32 {
        CLiburing_thread_id()
    }

    /// Whether the thread is blocked in the futex system call on the word at `address`, or on any
    /// word when `address` is nil (from `/proc/self/task/TID/syscall`: the call's number and its
    /// first argument). For rare checks only (``taskFileFields(_:)``).
    func isWaitingForFutex(at address: UInt?) -> Bool {
        guard let fields = taskFileFields("syscall"), fields.count >= 2, Int(fields[0]) == CLiburing_SYS_futex,
            fields[1].hasPrefix("0x"), let argument = UInt(fields[1].dropFirst(2), radix: 16)
        else { return false }
        return address == nil || argument == address
    }

    /// Whether the thread is on a CPU or waiting for one right now, not blocked in a system call
    /// (`/proc/self/task/TID/syscall` reads "running"). For rare checks only.
    func isRunningNow() -> Bool {
        taskFileFields("syscall")?.first == "running"
    }

    /// Where the thread waits, for a log line: the kernel function it sleeps in
    /// (`/proc/self/task/TID/wchan`) and its system call's number and first argument
    /// (`/proc/self/task/TID/syscall`). For rare events only.
    func describeWait() -> String {
        let function = taskFileFields("wchan")?.first ?? "?"
        let call = taskFileFields("syscall")?.prefix(2).joined(separator: " ") ?? "?"
        return "in \(function), system call \(call)"
    }

    /// The space-separated fields of the first 160 bytes of `/proc/self/task/TID/<name>`, or nil
    /// when it cannot be read. Opens the file for this one reading (a few microseconds).
    private func taskFileFields(_ name: String) -> [Substring]? {
        let descriptor = open("/proc/self/task/\(threadID)/\(name)", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { SystemCall.close(descriptor) }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 160) { buffer -> [Substring]? in
            let count = Glibc.read(descriptor, buffer.baseAddress, buffer.count)
            guard count > 0 else { return nil }
            let text = String(decoding: buffer[0..<count], as: UTF8.self)
            return text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        }
    }

    /// Reads the file now; nil once the thread is gone (`ESRCH`) or the contents are not two
    /// numbers.
    func read() -> Reading? {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 80) { buffer -> Reading? in
            let count = pread(descriptor, buffer.baseAddress, buffer.count, 0)
            guard count > 0 else { return nil }
            var fields: (UInt64, UInt64) = (0, 0)
            var field = 0
            var sawDigit = false
            for byte in buffer[0..<count] {
                if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
                    let digit = UInt64(byte - UInt8(ascii: "0"))
                    if field == 0 { fields.0 = fields.0 &* 10 &+ digit } else { fields.1 = fields.1 &* 10 &+ digit }
                    sawDigit = true
                } else if sawDigit {
                    field += 1
                    sawDigit = false
                    if field == 2 { break }
                }
            }
            guard field >= 2 || (field == 1 && sawDigit) else { return nil }
            return Reading(running: fields.0, waiting: fields.1, at: .now)
        }
    }
}
