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
}
