//
// CLiburing: liburing (Debian's liburing-dev, 2.3) for Swift.
//
// liburing's static inline helpers (io_uring_get_sqe, io_uring_prep_*, io_uring_cqe_seen, ...)
// import into Swift and are called directly. This header adds only what does not import:
// flag macros built from shifts, CPU_COUNT, and one helper liburing 2.3 keeps private.
// Everything here is prefixed CLiburing_.
//
#ifndef CLIBURING_H
#define CLIBURING_H

// liburing.h defines _XOPEN_SOURCE and _GNU_SOURCE before it includes glibc's headers. If it
// is the first to include them, glibc's declarations differ from the ones Swift's Glibc
// module saw (e.g. `fd_set`'s fields) and the module fails to build. Include them first.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <inttypes.h>
#include <time.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <malloc.h>

// liburing 2.3 ships its own copy of the kernel's io_uring.h (liburing/io_uring.h) that differs
// in small ways from the system's <linux/io_uring.h> (e.g. the type of rw_flags). swift-system's
// CSystem module includes the system header, and clang refuses two different definitions of
// `struct io_uring_sqe` in one Swift module. Both headers share the include guard
// LINUX_IO_URING_H, so including the system header first makes liburing use it too.
#include <linux/io_uring.h>

#include <liburing.h>

// ---------------------------------------------------------------------------------------------
// Layouts RingPort relies on.
// ---------------------------------------------------------------------------------------------
_Static_assert(sizeof(struct io_uring_sqe) == 64, "io_uring_sqe must be 64 bytes");
_Static_assert(sizeof(struct io_uring_cqe) == 16, "io_uring_cqe must be 16 bytes");
_Static_assert(sizeof(struct __kernel_timespec) == 16, "__kernel_timespec must be 16 bytes");
_Static_assert(sizeof(struct io_uring_getevents_arg) == 24, "io_uring_getevents_arg must be 24 bytes");

// ---------------------------------------------------------------------------------------------
// SQE flags: defined as (1U << IOSQE_*_BIT), which Swift does not import.
// ---------------------------------------------------------------------------------------------
static const __u8 CLiburing_IOSQE_FIXED_FILE = IOSQE_FIXED_FILE;
static const __u8 CLiburing_IOSQE_IO_DRAIN = IOSQE_IO_DRAIN;
static const __u8 CLiburing_IOSQE_IO_LINK = IOSQE_IO_LINK;
static const __u8 CLiburing_IOSQE_IO_HARDLINK = IOSQE_IO_HARDLINK;
static const __u8 CLiburing_IOSQE_ASYNC = IOSQE_ASYNC;
static const __u8 CLiburing_IOSQE_BUFFER_SELECT = IOSQE_BUFFER_SELECT;
static const __u8 CLiburing_IOSQE_CQE_SKIP_SUCCESS = IOSQE_CQE_SKIP_SUCCESS;

// ---------------------------------------------------------------------------------------------
// NOP result injection (recent kernels; probed at run time): a NOP whose nop_flags (the rw_flags field) has this bit
// completes with the result in its len field. Newer than liburing 2.3's headers.
// ---------------------------------------------------------------------------------------------
#ifndef IORING_NOP_INJECT_RESULT
#define IORING_NOP_INJECT_RESULT (1U << 0)
#endif
static const __u32 CLiburing_IORING_NOP_INJECT_RESULT = IORING_NOP_INJECT_RESULT;

// ---------------------------------------------------------------------------------------------
// Submission queue publication.
//
// liburing's io_uring_submit() both publishes the prepared SQEs (moves the kernel-visible tail)
// and enters the kernel. RingPort needs the two apart: SQEs are prepared and published under the
// ring's lock by any thread, while the thread that waits for completions enters the kernel
// without holding that lock. This is liburing 2.3's private __io_uring_flush_sq(), with the
// kernel head read with acquire ordering because another thread's io_uring_enter may be
// consuming entries at the same time.
//
// Returns the number of published SQEs the kernel has not consumed yet.
// The caller must hold the lock that serialises SQE preparation on this ring.
// ---------------------------------------------------------------------------------------------
static inline unsigned CLiburing_flush_sq(struct io_uring *ring) {
    struct io_uring_sq *sq = &ring->sq;
    unsigned tail = sq->sqe_tail;
    if (sq->sqe_head != tail) {
        sq->sqe_head = tail;
        io_uring_smp_store_release(sq->ktail, tail);
    }
    return tail - io_uring_smp_load_acquire(sq->khead);
}

/// Completions the kernel dropped because its overflow list could not grow (should stay 0).
static inline unsigned CLiburing_cq_overflow_count(const struct io_uring *ring) {
    return IO_URING_READ_ONCE(*ring->cq.koverflow);
}

// ---------------------------------------------------------------------------------------------
// CPU_ZERO / CPU_COUNT are macros that glibc hides without _GNU_SOURCE (which the Glibc
// module was built without), so the mask is counted by hand.
// ---------------------------------------------------------------------------------------------

/// The number of CPUs this thread may run on (sched_getaffinity), or -1 with errno set.
static inline int CLiburing_available_cpu_count(void) {
    cpu_set_t set;
    __builtin_memset(&set, 0, sizeof(set));
    if (sched_getaffinity(0, sizeof(set), &set) != 0) {
        return -1;
    }
    int count = 0;
    const unsigned long *words = (const unsigned long *)&set;
    for (size_t i = 0; i < sizeof(set) / sizeof(unsigned long); i++) {
        count += __builtin_popcountl(words[i]);
    }
    return count;
}

/// Names the calling thread (at most 15 bytes are kept), as shown by ps, top and perf.
static inline void CLiburing_set_thread_name(const char *name) {
    prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

/// Asks glibc's allocator to give free memory back to the system (malloc.h, which Swift's Glibc
/// module does not import). Returns 1 if some was released.
static inline int CLiburing_malloc_trim(void) {
    return malloc_trim(0);
}

// ---------------------------------------------------------------------------------------------
// Newer than the kernel headers liburing 2.3 builds against (6.1): defined here, probed at run time.
// ---------------------------------------------------------------------------------------------

/// `IORING_FEAT_RECVSEND_BUNDLE` (6.10): a receive may fill several provided buffers in one CQE.
static const unsigned CLiburing_IORING_FEAT_RECVSEND_BUNDLE = 1U << 14;
/// `IOU_PBUF_RING_INC` (6.12), in `io_uring_buf_reg.flags` (named `pad` in 6.1's header): the
/// kernel consumes provided buffers incrementally, several receives per buffer.
static const unsigned short CLiburing_IOU_PBUF_RING_INC = 2;

/// The number of the futex system call (what a thread blocked on a pthread mutex is in).
static const long CLiburing_SYS_futex = SYS_futex;

/// The calling thread's kernel thread ID (gettid, which glibc declares only with _GNU_SOURCE).
static inline int CLiburing_thread_id(void) {
    return (int)syscall(SYS_gettid);
}

#endif // CLIBURING_H
