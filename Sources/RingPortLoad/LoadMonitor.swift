import Glibc
import RingPort
import Synchronization

/// The counters one load worker publishes for the progress line.
///
/// Written by its worker thread only (a relaxed store once per completion batch, no
/// read-modify-write), read by the monitor thread.
package final class WorkerProgress: Sendable {
    /// Messages the worker completed since the run started (warm-up included).
    let completedMessages = Atomic<UInt64>(0)
    /// Errors the worker counted.
    let errors = Atomic<UInt64>(0)

    /// No messages, no errors.
    package init() {}

    /// Publishes `tally`'s counts. Worker thread.
    @inline(__always)
    func publish(_ tally: LoadTally) {
        completedMessages.store(tally.completedMessages, ordering: .relaxed)
        errors.store(tally.errors, ordering: .relaxed)
    }
}

/// The monitor thread of `ringport load`: prints the progress line once per second, and is the
/// watchdog that ends the process when the run overstays its hard deadline.
///
/// The hard deadline is first the end of the connect phase's limit, then (from
/// ``beginRun(at:measureStart:measureEnd:)``) the end of the measured window plus
/// ``LoadPlan/teardownAllowance``. The run itself stops at the end of the window even if the
/// server hangs; the watchdog is for anything that would not (closing the port waits for the
/// kernel, for example). When it fires it exits with status 1, or, once the report is out
/// (``finish(exitStatus:)``), with the report's status.
///
/// ## Threads
/// The monitor's own thread is detached and never joined: it dies with the process. Every other
/// method may be called from any thread; the state they share with the monitor thread is atomic.
package final class LoadMonitor: Sendable {
    private let workers: [WorkerProgress]
    private let showsProgress: Bool
    private let hardDeadline: Atomic<UInt64>
    private let exitStatus = Atomic<Int32>(1)
    private let runStart = Atomic<UInt64>(0)
    private let measureStart = Atomic<UInt64>(0)
    private let measureEnd = Atomic<UInt64>(0)
    private let finished = Atomic<Bool>(false)

    /// A monitor of `workers` (whose progress it sums) that prints progress when `showsProgress`
    /// and ends the process at `hardDeadline` (monotonic nanoseconds) unless moved.
    package init(workers: [WorkerProgress], showsProgress: Bool, hardDeadline: UInt64) {
        self.workers = workers
        self.showsProgress = showsProgress
        self.hardDeadline = Atomic(hardDeadline)
    }

    /// Starts the monitor thread (detached).
    package func start() throws(LoadFailure) {
        do {
            _ = try PThread(name: "load-monitor", detached: true) { [self] in run() }
        } catch {
            throw LoadFailure("cannot start the monitor thread: \(error)")
        }
    }

    /// The connections are established and the clock started at `start`; messages count from
    /// `measureStart` to `measureEnd`. Moves the hard deadline to `measureEnd` plus the teardown
    /// allowance.
    func beginRun(at start: UInt64, measureStart: UInt64, measureEnd: UInt64) {
        self.measureStart.store(measureStart, ordering: .relaxed)
        self.measureEnd.store(measureEnd, ordering: .relaxed)
        hardDeadline.store(measureEnd + LoadPlan.teardownAllowance.nanosecondsClamped, ordering: .relaxed)
        runStart.store(start, ordering: .releasing)
    }

    /// The report is printed: no more progress lines, and if the watchdog fires from now on
    /// (while the connections and the port are closed) it exits with `exitStatus`.
    package func finish(exitStatus status: Int32) {
        exitStatus.store(status, ordering: .relaxed)
        finished.store(true, ordering: .releasing)
    }

    /// The monitor thread's loop: wakes at each whole second of the run (and every 100 ms while
    /// connecting), prints the progress line, checks the hard deadline.
    private func run() {
        var lastTick: UInt64 = 0
        var lastCompleted: UInt64 = 0
        var nextTick: UInt64 = 0
        while true {
            let now = MonotonicInstant.now.nanoseconds
            let deadline = hardDeadline.load(ordering: .relaxed)
            if now >= deadline {
                let status = exitStatus.load(ordering: .relaxed)
                StandardError.write("ringport load: hard deadline passed; exiting with status \(status)")
                _exit(status)
            }
            let start = runStart.load(ordering: .acquiring)
            var wakeUp = now + 100_000_000
            if start != 0 {
                if nextTick == 0 {
                    lastTick = start
                    nextTick = start + 1_000_000_000
                }
                if now >= nextTick {
                    let completed = workers.reduce(0) { $0 + $1.completedMessages.load(ordering: .relaxed) }
                    let errors = workers.reduce(0) { $0 + $1.errors.load(ordering: .relaxed) }
                    if showsProgress && !finished.load(ordering: .acquiring)
                        && now < measureEnd.load(ordering: .relaxed) + 500_000_000
                    {
                        let seconds = Double(now - lastTick) / 1e9
                        let rate = seconds > 0 ? Double(completed &- lastCompleted) / seconds : 0
                        let phase = now < measureStart.load(ordering: .relaxed) ? " (warm-up)" : ""
                        let elapsed = (now - start + 500_000_000) / 1_000_000_000
                        StandardError.write(
                            """
                            ringport load: \(elapsed) s: \(LoadReport.grouped(rate, decimals: 0)) msgs/s, \
                            \(errors) errors\(phase)
                            """
                        )
                    }
                    lastTick = now
                    lastCompleted = completed
                    while nextTick <= now { nextTick += 1_000_000_000 }
                }
                wakeUp = nextTick
            }
            Self.sleep(until: min(wakeUp, deadline))
        }
    }

    /// Sleeps until the monotonic clock reads `instant` nanoseconds.
    private static func sleep(until instant: UInt64) {
        var time = timespec(tv_sec: Int(instant / 1_000_000_000), tv_nsec: Int(instant % 1_000_000_000))
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &time, nil) == EINTR {}
    }
}
