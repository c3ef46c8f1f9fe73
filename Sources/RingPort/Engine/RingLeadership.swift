import Glibc

/// Who drives one ``Ring``: its leader, the standbys parked behind it, and the sentry among them
/// that takes the ring over when the leader is stuck in a handler.
///
/// The rules, all here:
/// - **One leader per ring.** At most one attached worker leads (``take(by:)``): the only thread
///   that enters the kernel for the ring while workers are attached. It submits, waits, reaps,
///   and handles what it reaped.
/// - **Standbys park.** The other attached workers wait on the ring's condition (``park(now:deadline:hasWork:)``);
///   a worker leaves the lead by detaching (``detach(_:)``) and a parked one is woken.
/// - **One sentry.** The first standby to park is the sentry, which waits on the lock's second
///   condition: it wakes every ``stallThreshold`` (doubling up to ``idleSentryInterval`` while the
///   leader sleeps in the kernel; the leader's return wakes it from a long sleep) and reports the
///   leader stalled when the leader's progress count did not move for a whole threshold while
///   work waited *and* the leader was blocked meanwhile. The caller then takes the ring over
///   (``take(by:)`` counts it).
/// - **The leader takes what it reaped.** While a leader that always comes back to `dequeue` (a
///   ``WorkerPool``'s) handles completions, standbys leave the ready ones to it
///   (``leavesReadyCompletionsToLeader(_:)``): a sentry waking for its watch that took them would
///   run handlers beside the leader and fight it for the ring's lock. They take them once the
///   leader waits in the kernel, leaves, or is taken over.
/// - **Blocked, not busy.** A leader that makes no progress may be blocked in a handler (asleep in
///   a system call, on a lock, on disk) — what the standbys are for — or runnable: busy with a
///   long batch, or preempted because the cores are shared (with the load client, say). Taking
///   over from a runnable leader gains nothing and costs a lot (requests it armed keep waking it,
///   see `Ring`), so the sentry reads the leader thread's scheduler statistics (``ThreadSchedule``)
///   at the start and the end of its watch: a leader that neither ran nor waited for a CPU for
///   most of the window was blocked. Where they cannot be read, no progress is enough. A leader
///   blocked on a lock (a futex) gets one more threshold: the lock's holder may itself be a
///   preempted thread.
///
/// ## Threads
/// Every method is called with the ring's lock held (``lock``, whose conditions the standbys and
/// the sentry wait on). A class, not a struct: a parked worker waits inside ``park(now:deadline:hasWork:)``
/// while other workers change the leadership.
final class RingLeadership {
    // Stored properties marked @exclusivity(unchecked) skip Swift's dynamic exclusivity checks:
    // every access happens with the ring's lock held, and on the echo benchmark the checks cost
    // 12–14% of the server's CPU per message (docs/ARCHITECTURE.md).

    /// What the leader is doing.
    enum State: Equatable {
        /// No worker leads this ring.
        case none
        /// The leader is inside `io_uring_enter`, waiting for completions.
        case waitingInKernel
        /// The leader is handling completions.
        case running
    }

    /// The longest the sentry sleeps while its leader is idle in the kernel.
    static let idleSentryInterval: UInt64 = 100_000_000

    /// The ring's lock: its condition is where standbys park, its second one where the sentry
    /// does.
    private let lock: ConditionMutex
    /// How long a leader may stay inside one handler before the sentry takes over (nanoseconds).
    let stallThreshold: UInt64
    /// A sentry sleep this long or longer is cut short by the leader's return from the kernel
    /// (see ``leaderReturnedFromKernel()``): four thresholds, at most ``idleSentryInterval``;
    /// `.max` (never) when that is not longer than a threshold.
    private let longSentrySleep: UInt64

    @exclusivity(unchecked) private var leader: ObjectIdentifier?
    /// Whether the leader is a worker that comes back to `dequeue` until it is stopped (a
    /// ``WorkerPool``'s), so that what is ready is certain to be taken by it.
    @exclusivity(unchecked) private var leaderComesBack = false
    @exclusivity(unchecked) private var leaderThread = pthread_t()
    /// The leader thread's kernel ID, and its scheduler statistics (opened by the sentry).
    @exclusivity(unchecked) private var leaderThreadID: Int32 = 0
    @exclusivity(unchecked) private var leaderSchedule: ThreadSchedule?
    /// Set when a thread's scheduler statistics could not be read: stalls are then judged by
    /// progress alone.
    @exclusivity(unchecked) private var schedulesUnavailable = false
    /// What the leader is doing (``State/none`` when nobody leads).
    @exclusivity(unchecked) private(set) var state = State.none
    /// Counts the changes of the leader *thread*: requests posted in an earlier epoch were
    /// submitted by another thread, which the kernel would wake to finish them.
    @exclusivity(unchecked) private(set) var epoch: UInt32 = 0
    /// Counts the leader's returns from `dequeue` and from the kernel: the sentry sees a stalled
    /// leader as one whose count did not move for a whole stall threshold (no clock read on the
    /// hot path).
    @exclusivity(unchecked) private var progress: UInt64 = 0
    /// The progress count at which the sentry last found the leader waiting for a lock and gave
    /// it one more threshold (nil: none given since the leader last ran).
    @exclusivity(unchecked) private var lockWaitGraceProgress: UInt64?
    /// Where the leader waited when the sentry last found it stuck (``ThreadSchedule/describeWait()``),
    /// for the takeover's log line.
    @exclusivity(unchecked) private(set) var lastStall = ""
    /// How long the sentry sleeps: the stall threshold while the leader works, doubling up to
    /// ``idleSentryInterval`` while it finds the leader idle in the kernel (an idle server barely
    /// wakes up).
    @exclusivity(unchecked) private var sentryInterval: UInt64
    @exclusivity(unchecked) private var sentryParked = false
    /// Workers attached to the ring, and how many of them are parked now.
    @exclusivity(unchecked) private(set) var attachedWorkers = 0
    @exclusivity(unchecked) private(set) var parkedWorkers = 0

    init(lock: ConditionMutex, stallThreshold: Duration) {
        self.lock = lock
        self.stallThreshold = stallThreshold.nanosecondsClamped
        sentryInterval = self.stallThreshold
        let (four, overflow) = self.stallThreshold.multipliedReportingOverflow(by: 4)
        let long = min(overflow ? .max : four, RingLeadership.idleSentryInterval)
        longSentrySleep = long > self.stallThreshold ? long : .max
    }

    // MARK: Attaching

    /// A worker attached to the ring.
    func attach() {
        attachedWorkers += 1
    }

    /// A worker detached: if it led, the lead is free and a parked worker is woken to take it
    /// (what the leader prepared and did not submit is submitted by the next one: this thread may
    /// be about to exit, and the kernel would cancel it).
    func detach(_ worker: ObjectIdentifier) {
        if leader == worker {
            leader = nil
            state = .none
            // Forgotten, so that the next leader counts as a new thread even when it is a new
            // thread under the same `pthread_t` (glibc hands an exited thread's out again): a new
            // epoch, and scheduler statistics read from the right thread.
            leaderThread = pthread_t()
            wakeStandbyToLead()
        }
        attachedWorkers -= 1
    }

    // MARK: Leading

    /// Whether `worker` leads the ring.
    @inline(__always)
    func isLeader(_ worker: ObjectIdentifier) -> Bool {
        leader == worker
    }

    /// Whether nobody leads the ring (a worker that wants to wait may take the lead).
    var isVacant: Bool {
        leader == nil
    }

    /// Whether the calling thread is the leader and is handling completions (so it may submit
    /// straight into the submission queue: it enters the kernel next).
    @inline(__always)
    var callerIsRunningLeader: Bool {
        if case .running = state {
            return pthread_equal(leaderThread, pthread_self()) != 0
        }
        return false
    }

    /// `worker`, on the calling thread, leads from now on; `comesBack` says whether it always
    /// comes back to `dequeue` (a pool's worker). Returns true when it took the ring over from
    /// another leader (stuck in a handler; it becomes a standby when it returns).
    func take(by worker: ObjectIdentifier, comesBack: Bool) -> Bool {
        leaderComesBack = comesBack
        var tookOver = false
        if leader != worker {
            tookOver = leader != nil
            leader = worker
            // The new leader may have been the sentry (a takeover, or the vacant ring taken by
            // the standby a detaching leader woke).
            keepASentry()
        }
        let thread = pthread_self()
        if pthread_equal(leaderThread, thread) == 0 {
            leaderThread = thread
            leaderThreadID = ThreadSchedule.currentThreadID
            epoch &+= 1
            // Opened now, not when the sentry first looks: the ring holds one such descriptor
            // from its first leader on, not one that appears at some point under load.
            if !schedulesUnavailable {
                leaderSchedule = ThreadSchedule(threadID: leaderThreadID)
                if leaderSchedule == nil { schedulesUnavailable = true }
            }
        }
        return tookOver
    }

    /// Whether `worker`, not the leader, should leave the ready completions alone: the leader
    /// handles completions and comes back for the rest. (A worker that may never come back, one
    /// an application drives itself, does not keep them from the others.)
    @inline(__always)
    func leavesReadyCompletionsToLeader(_ worker: ObjectIdentifier) -> Bool {
        state == .running && leaderComesBack && leader != worker
    }

    /// The leader returned with completions or from the kernel: it is running and made progress.
    @inline(__always)
    func leaderRan() {
        state = .running
        progress &+= 1
    }

    /// The leader returned from the kernel: it runs, and a sentry that found it idle there at
    /// two watches in a row, and so sleeps four thresholds or more now (up to
    /// ``idleSentryInterval``), is woken to watch every threshold again. Without this, a handler
    /// that blocks right after an idle stretch went unwatched for the rest of the sentry's sleep.
    /// A sleep of two thresholds (the leader was in the kernel at one watch, as it is at many
    /// under load) is left to run: waking the sentry then doubled the server's voluntary context
    /// switches at 1,000 connections, for 5 ms less before a takeover.
    @inline(__always)
    func leaderReturnedFromKernel() {
        leaderRan()
        if sentryInterval >= longSentrySleep {
            // Also when no sentry is parked (it left to handle completions): the next one to
            // park watches every threshold while the leader runs.
            sentryInterval = stallThreshold
            if sentryParked { lock.signalSecond() }
        }
    }

    /// `worker` returned from `dequeue` with completions: counts as the leader's progress if it
    /// leads; a standby that leaves to handle them may have been the sentry.
    @inline(__always)
    func ran(_ worker: ObjectIdentifier) {
        if leader == worker {
            leaderRan()
        } else {
            keepASentry()
        }
    }

    /// A worker that may have been the sentry leaves the standbys (to lead, or to handle
    /// completions): when others are parked and none of them watches, one is woken, and parks
    /// again as the sentry. Only the first standby to park watches; the rest wait for a signal,
    /// so without this a ring could be left with no sentry, and a leader blocked in a handler
    /// with nobody to take over.
    @inline(__always)
    private func keepASentry() {
        if parkedWorkers > 0 && !sentryParked { lock.signal() }
    }

    /// The leader is about to wait in the kernel (without the lock).
    func leaderWillWaitInKernel() {
        state = .waitingInKernel
    }

    // MARK: Standing by

    /// Parks the calling worker as a standby until signalled or `deadline`. One parked worker,
    /// the sentry, wakes every stall threshold instead; it returns true when the leader made no
    /// progress in that time while `hasWork()` (then the caller takes the ring over with
    /// ``take(by:)``). Returns with the lock held.
    func park(now: MonotonicInstant, deadline: MonotonicInstant, hasWork: () -> Bool) -> Bool {
        parkedWorkers += 1
        defer { parkedWorkers -= 1 }
        guard !sentryParked else {
            if deadline == .distantFuture {
                lock.wait()
            } else {
                lock.wait(until: deadline)
            }
            return false
        }
        sentryParked = true
        let observed = progress
        let observedThread = leaderThreadID
        let before = state == .running ? readLeaderSchedule() : nil
        let wakeUp = MonotonicInstant(nanoseconds: now.nanoseconds &+ sentryInterval)
        lock.waitOnSecond(until: min(deadline, wakeUp))
        sentryParked = false
        if state == .waitingInKernel {
            sentryInterval = min(sentryInterval &* 2, RingLeadership.idleSentryInterval)
        } else {
            sentryInterval = stallThreshold
        }
        guard MonotonicInstant.now >= wakeUp && state == .running && progress == observed && hasWork() else {
            return false
        }
        guard let before, leaderThreadID == observedThread, let after = readLeaderSchedule() else {
            // No statistics (or no first reading): no progress is the only sign there is.
            return schedulesUnavailable
        }
        // Blocked for most of the window, and still blocked now: a leader that runs again (it
        // waited for a lock whose holder was preempted on these shared cores, say) is not stuck.
        guard RingLeadership.wasBlocked(from: before, to: after), !(leaderSchedule?.isRunningNow() ?? false) else {
            lockWaitGraceProgress = nil
            return false
        }
        // Blocked on the ring's own lock is not blocked in a handler: whoever holds it (a sentry
        // preempted at the wrong moment) lets go soon.
        if leaderSchedule?.isWaitingForFutex(at: lock.lockAddress) ?? false { return false }
        // Blocked on another lock: its holder may be a thread preempted on these shared cores,
        // which lets go within its next time slice. One more threshold before the takeover; a
        // leader still waiting then (a lock held for long, a deadlock) is taken over.
        if lockWaitGraceProgress != observed, leaderSchedule?.isWaitingForFutex(at: nil) ?? false {
            lockWaitGraceProgress = observed
            return false
        }
        lastStall = leaderSchedule?.describeWait() ?? "?"
        return true
    }

    /// Closes the leader's scheduler statistics (the port is closing).
    func close() {
        leaderSchedule = nil
        leaderThreadID = 0
        leaderThread = pthread_t()
    }

    /// Whether a thread read at `before` and `after` spent most of the time between neither
    /// running nor waiting for a CPU: asleep, blocked.
    static func wasBlocked(from before: ThreadSchedule.Reading, to after: ThreadSchedule.Reading) -> Bool {
        let window = before.at.nanoseconds(until: after.at)
        let active = (after.running &- before.running) &+ (after.waiting &- before.waiting)
        return active < window / 2
    }

    /// The leader thread's scheduler statistics now (nil when they cannot be read).
    private func readLeaderSchedule() -> ThreadSchedule.Reading? {
        guard leaderSchedule?.threadID == leaderThreadID else { return nil }
        return leaderSchedule?.read()
    }

    /// Wakes a parked worker to take the vacant lead, if any is parked (work arrived while nobody
    /// leads, or the leader detached): one that waits for a signal, and the sentry too.
    /// `parkedWorkers` also counts standbys that have left the condition (timed out, woken) and
    /// not yet taken the lock back, so a signal to the condition alone may wake nobody while the
    /// sentry sleeps on; nobody leads, which is rare, so both are woken.
    func wakeStandbyToLead() {
        guard parkedWorkers > 0 else { return }
        lock.signal()
        if sentryParked { lock.signalSecond() }
    }

    /// Wakes every parked worker (the pool is stopping).
    func wakeAllStandbys() {
        lock.broadcast()
    }
}
