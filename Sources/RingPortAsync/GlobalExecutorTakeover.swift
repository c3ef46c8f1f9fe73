import Glibc
import RingPort
import Synchronization

/// Routes the jobs of Swift's global concurrent executor to one ``PortTaskExecutor`` for as long
/// as its port runs (``AsyncPort/Resumption/portWorkersAsGlobalExecutor``), through the
/// concurrency runtime's enqueue hook (`swift_task_enqueueGlobal_hook`), as SwiftNIO does for its
/// event loops.
///
/// Why: a task with an executor preference looks the preference up under the task's status lock
/// at every executor switch and every enqueue (`AsyncTask::getPreferredTaskExecutor`); the same
/// tasks without a preference skip that lookup, and their jobs still land on the port's workers.
///
/// Process-wide, one executor at a time. Delayed jobs (`Task.sleep`) are not routed: the runtime
/// runs them on its own threads, and the tasks come back to the workers at their next resumption.
///
/// Thread-safety: ``install(_:)`` and ``uninstall(_:)`` take a lock; the hook counts itself in
/// and out (two atomic operations per job) and reads one atomic word. Ownership: the installation
/// retains the executor (and with it the port); ``uninstall(_:)`` releases it once no hook call
/// that could have read its address is still running.
enum GlobalExecutorTakeover {
    private typealias Original = @convention(thin) (UnownedJob) -> Void
    private typealias Hook = @convention(thin) (UnownedJob, Original) -> Void

    /// The installed executor's address (0: none).
    private static let installed = Atomic<UInt>(0)
    /// Hook calls running now. With `installed`, a Dekker pair (both sequentially consistent): a
    /// call that read an address is counted before ``uninstall(_:)`` looks, so the executor is
    /// released only after every such call returned.
    private static let hookCallsInFlight = Atomic<Int>(0)
    /// Serialises installing and uninstalling.
    private static let installation = LockedValue(())

    /// The runtime's hook variable, or nil when this runtime has none.
    // nonisolated(unsafe): the pointer never changes; the variable it points to is written only
    // under `installation` (the runtime reads it at every global enqueue, as designed).
    nonisolated(unsafe) private static let hookVariable: UnsafeMutablePointer<Hook?>? = {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "swift_task_enqueueGlobal_hook")
        else { return nil }
        return symbol.assumingMemoryBound(to: Hook?.self)
    }()

    /// Routes the global executor's jobs to `executor`.
    ///
    /// - Throws: `RingPortError` `.unsupported` when the runtime has no enqueue hook, or
    ///   `.invalidArgument` when another running port's workers run the global executor already.
    static func install(_ executor: PortTaskExecutor) throws(RingPortError) {
        guard let hookVariable else {
            throw RingPortError(
                .unsupported,
                operation: "run the global executor on the port's workers: no swift_task_enqueueGlobal_hook")
        }
        try installation.withLock { _ throws(RingPortError) in
            guard installed.load(ordering: .acquiring) == 0, hookVariable.pointee == nil else {
                throw RingPortError(
                    .invalidArgument,
                    operation: """
                        run the global executor on the port's workers: another AsyncPort's workers, or another \
                        library's hook, run it
                        """)
            }
            let address = UInt(bitPattern: Unmanaged.passRetained(executor).toOpaque())
            installed.store(address, ordering: .releasing)
            hookVariable.pointee = { job, original in
                GlobalExecutorTakeover.hookCallsInFlight.add(1, ordering: .sequentiallyConsistent)
                defer { GlobalExecutorTakeover.hookCallsInFlight.subtract(1, ordering: .releasing) }
                let address = GlobalExecutorTakeover.installed.load(ordering: .sequentiallyConsistent)
                guard address != 0 else { return original(job) }
                let executor = Unmanaged<PortTaskExecutor>.fromOpaque(UnsafeRawPointer(bitPattern: address)!)
                executor._withUnsafeGuaranteedRef { executor in
                    // A stopped executor would hand the job back to the global executor, which is
                    // this hook again.
                    if executor.isStopped {
                        original(job)
                    } else {
                        executor.enqueue(ExecutorJob(job))
                    }
                }
            }
        }
    }

    /// Stops routing jobs to `executor` (the port shuts down; call after `executor.stop()`), and
    /// releases it once the hook calls that may still use it have returned (they only queue a
    /// job: microseconds). Does nothing when `executor` is not the installed one. Not from a job
    /// or a completion handler (the port's own shutdown calls it from a thread of its own).
    static func uninstall(_ executor: PortTaskExecutor) {
        installation.withLock { _ in
            let address = UInt(bitPattern: Unmanaged.passUnretained(executor).toOpaque())
            guard installed.load(ordering: .acquiring) == address else { return }
            hookVariable?.pointee = nil
            installed.store(0, ordering: .sequentiallyConsistent)
            while hookCallsInFlight.load(ordering: .sequentiallyConsistent) != 0 {
                sched_yield()
            }
            Unmanaged<PortTaskExecutor>.fromOpaque(UnsafeRawPointer(bitPattern: address)!).release()
        }
    }
}
