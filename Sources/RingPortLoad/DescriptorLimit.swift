import Glibc
import RingPort

/// The process's open-file limit (`RLIMIT_NOFILE`).
///
/// Stateless; main thread (it changes the whole process's limit).
package enum DescriptorLimit {
    /// Raises the soft limit to the hard limit, then checks that `needed` descriptors fit.
    ///
    /// - Throws: ``LoadFailure`` when they do not (the message says the limit).
    package static func raise(toFit needed: Int) throws(LoadFailure) {
        var limit = rlimit()
        if getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            if setrlimit(RLIMIT_NOFILE_VALUE, &limit) != 0 {
                StandardError.write("ringport load: setrlimit(RLIMIT_NOFILE): \(String(cString: strerror(errno)))")
            }
        }
        guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 else { return }
        if limit.rlim_cur != rlim_t.max && limit.rlim_cur < rlim_t(needed) {  // rlim_t.max: RLIM_INFINITY
            throw LoadFailure(
                """
                \(needed) descriptors are needed and RLIMIT_NOFILE allows \(limit.rlim_cur) (raise the hard \
                limit, e.g. ulimit -Hn)
                """
            )
        }
    }

    /// `RLIMIT_NOFILE` as the type `getrlimit` takes on glibc (`__rlimit_resource_t`).
    private static var RLIMIT_NOFILE_VALUE: __rlimit_resource_t {
        __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    }
}
