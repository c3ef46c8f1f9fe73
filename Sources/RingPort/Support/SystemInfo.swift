import CLiburing
import Glibc

/// Facts about the machine RingPort runs on.
///
/// `package`: used by the port's defaults, the server's memory trimming and `ringport probe`;
/// not part of RingPort's public API (``CompletionPort/Configuration/defaultWorkerCount`` and
/// ``CompletionPort/Configuration/defaultRingCount`` are the public answers).
package enum SystemInfo {
    /// The number of CPUs this process may run on: its CPU affinity mask (which `taskset` and
    /// container CPU sets narrow), or the online CPU count if the mask cannot be read. At least 1.
    package static var availableCPUCount: Int {
        let fromAffinity = Int(CLiburing_available_cpu_count())
        if fromAffinity > 0 { return fromAffinity }
        return max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    }

    /// Asks the C allocator to return free memory to the system (glibc's `malloc_trim`): whole
    /// free pages in every arena, not only at the top of the heap. Worth calling after a burst
    /// freed many buffers; it walks the heaps, so not on every message. Any thread.
    package static func returnFreeMemoryToSystem() {
        _ = CLiburing_malloc_trim()
    }
}
