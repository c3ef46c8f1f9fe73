import Glibc
import SystemPackage

/// Why the kernel refused to set up an io_uring instance, with what to do about it.
///
/// Produced by ``CompletionPort/init(configuration:)`` inside a ``RingPortError`` whose code is
/// ``RingPortError/Code/ioURingUnavailable``. A value type, safe to pass between threads.
public struct IOURingUnavailability: Hashable, Sendable, CustomStringConvertible {
    private enum Cause: Hashable, Sendable {
        case notInKernel
        case disabledBySysctl
        case restrictedToGroup
        case blockedByPolicy
        case lockedMemoryLimit
        case descriptorLimit
        case invalidRingSize
        case missingFeatures(String)
        case other
    }

    private let cause: Cause

    /// `ENOSYS`: the kernel was built without io_uring, or a seccomp filter answers `ENOSYS`.
    public static let notInKernel = IOURingUnavailability(cause: .notInKernel)
    /// `EPERM` with `kernel.io_uring_disabled = 2`: io_uring is switched off for everyone.
    public static let disabledBySysctl = IOURingUnavailability(cause: .disabledBySysctl)
    /// `EPERM` with `kernel.io_uring_disabled = 1`: only members of `kernel.io_uring_group` may use it.
    public static let restrictedToGroup = IOURingUnavailability(cause: .restrictedToGroup)
    /// `EPERM` with io_uring enabled: a seccomp filter (a container runtime's default profile)
    /// or a security module denies `io_uring_setup`.
    public static let blockedByPolicy = IOURingUnavailability(cause: .blockedByPolicy)
    /// `ENOMEM`: the ring's memory exceeds the locked-memory limit (`ulimit -l`) on kernels
    /// that charge rings to it, or the kernel is out of memory.
    public static let lockedMemoryLimit = IOURingUnavailability(cause: .lockedMemoryLimit)
    /// `EMFILE` / `ENFILE`: no file descriptor left for the ring.
    public static let descriptorLimit = IOURingUnavailability(cause: .descriptorLimit)
    /// `EINVAL`: the ring sizes asked for are out of the kernel's range.
    public static let invalidRingSize = IOURingUnavailability(cause: .invalidRingSize)
    /// The ring was set up but lacks features RingPort requires (named in the description).
    public static func missingFeatures(_ names: String) -> IOURingUnavailability {
        IOURingUnavailability(cause: .missingFeatures(names))
    }
    /// Any other refusal; the errno in the enclosing error says which.
    public static let other = IOURingUnavailability(cause: .other)

    /// Classifies a failed `io_uring_setup`. `ioURingDisabledSetting` is the value of the sysctl
    /// `kernel.io_uring_disabled` (nil when the file is absent or unreadable).
    static func classify(_ errno: Errno, ioURingDisabledSetting: Int?) -> IOURingUnavailability {
        switch errno {
        case .noFunction: return .notInKernel
        case .notPermitted, .permissionDenied:
            switch ioURingDisabledSetting {
            case 2?: return .disabledBySysctl
            case 1?: return .restrictedToGroup
            default: return .blockedByPolicy
            }
        case .noMemory: return .lockedMemoryLimit
        case .tooManyOpenFiles, .tooManyOpenFilesInSystem: return .descriptorLimit
        case .invalidArgument: return .invalidRingSize
        default: return .other
        }
    }

    /// Reads `kernel.io_uring_disabled` (0, 1 or 2), or nil when the kernel has no such setting.
    static func readIOURingDisabledSetting() -> Int? {
        let fd = open("/proc/sys/kernel/io_uring_disabled", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { SystemCall.close(fd) }
        var byte: UInt8 = 0
        guard read(fd, &byte, 1) == 1, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
        return Int(byte - UInt8(ascii: "0"))
    }

    /// Whether this is a refusal of io_uring itself — not in the kernel, switched off, blocked by
    /// a policy, over the locked-memory limit, too old — after which
    /// ``CompletionPort/Backend/automatic`` serves with epoll; not a bad ring size or a process
    /// out of descriptors, which epoll would not cure.
    public var isRefusal: Bool {
        switch cause {
        case .notInKernel, .disabledBySysctl, .restrictedToGroup, .blockedByPolicy, .lockedMemoryLimit,
            .missingFeatures:
            true
        case .descriptorLimit, .invalidRingSize, .other:
            false
        }
    }

    /// What happened, in one sentence.
    public var explanation: String {
        switch cause {
        case .notInKernel:
            "The kernel does not provide io_uring (built without CONFIG_IO_URING, or a seccomp filter answers ENOSYS)."
        case .disabledBySysctl:
            "io_uring is disabled on this machine (sysctl kernel.io_uring_disabled = 2)."
        case .restrictedToGroup:
            """
            io_uring is restricted to the group named by kernel.io_uring_group (sysctl kernel.io_uring_disabled = \
            1) and this process is not in it.
            """
        case .blockedByPolicy:
            """
            io_uring is enabled in the kernel but this process may not use it: a seccomp filter (container \
            runtimes block io_uring by default) or a security module denies io_uring_setup.
            """
        case .lockedMemoryLimit:
            "The ring's memory does not fit the locked-memory limit (RLIMIT_MEMLOCK), or the kernel is out of memory."
        case .descriptorLimit:
            "No file descriptor is left for the ring (EMFILE/ENFILE)."
        case .invalidRingSize:
            "The kernel rejected the ring parameters (entries must be 1...32768, completion entries at most 65536)."
        case .missingFeatures(let names):
            "The kernel's io_uring lacks features RingPort needs: \(names). RingPort requires Linux 5.11 or later."
        case .other:
            "The kernel refused to set up io_uring."
        }
    }

    /// What to do about it, in one sentence.
    public var fix: String {
        switch cause {
        case .notInKernel:
            """
            Run on Linux 5.11 or later with io_uring enabled, or allow io_uring_setup, io_uring_enter and \
            io_uring_register in the seccomp profile.
            """
        case .disabledBySysctl:
            """
            Run `sysctl -w kernel.io_uring_disabled=0` as root (or 1 with kernel.io_uring_group set to a group \
            this user is in).
            """
        case .restrictedToGroup:
            """
            Add this user to the group in /proc/sys/kernel/io_uring_group, or run `sysctl -w \
            kernel.io_uring_disabled=0` as root.
            """
        case .blockedByPolicy:
            """
            Run the container with a seccomp profile that allows io_uring_setup, io_uring_enter and \
            io_uring_register (e.g. docker run --security-opt seccomp=<profile>), or lift the LSM rule.
            """
        case .lockedMemoryLimit:
            """
            Raise the limit (`ulimit -l`, LimitMEMLOCK= in systemd, --ulimit memlock= in docker) or use smaller \
            rings (--ring-entries).
            """
        case .descriptorLimit:
            "Raise the descriptor limit (`ulimit -n`) or close descriptors."
        case .invalidRingSize:
            "Use ring entries between 1 and 32768."
        case .missingFeatures:
            "Upgrade the kernel to 5.11 or later."
        case .other:
            "Check the errno above and the kernel log (dmesg)."
        }
    }

    /// The ``explanation`` followed by the ``fix``, for a person to read.
    public var description: String { "\(explanation) Fix: \(fix)" }
}
