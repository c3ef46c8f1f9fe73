import CLiburing

#if canImport(Glibc)
import Glibc
#endif

/// Facts about the machine RingPort runs on.
public enum SystemInfo {
    /// The number of CPUs this process may run on: its CPU affinity mask (which `taskset` and
    /// container CPU sets narrow), or the online CPU count if the mask cannot be read. At least 1.
    public static var availableCPUCount: Int {
        let fromAffinity = Int(CLiburing_available_cpu_count())
        if fromAffinity > 0 { return fromAffinity }
        return max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    }

    /// Asks the C allocator to return free memory to the system (glibc's `malloc_trim`): whole
    /// free pages in every arena, not only at the top of the heap. Worth calling after a burst
    /// freed many buffers; it walks the heaps, so not on every message. Any thread.
    public static func returnFreeMemoryToSystem() {
        _ = CLiburing_malloc_trim()
    }
}
