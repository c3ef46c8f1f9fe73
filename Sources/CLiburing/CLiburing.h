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
#include <sys/epoll.h>
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

// ---------------------------------------------------------------------------------------------
// The total byte limit of a multishot receive: the SQE's `optlen`, which newer kernels read for
// IORING_OP_RECV with IORING_RECV_MULTISHOT (the receive ends once it delivered that many bytes).
// liburing 2.3's io_uring_sqe has no `optlen` member: it shares its place with `file_index`.
// Kernels without the limit reject the field (EINVAL) or ignore it; probe before use.
// ---------------------------------------------------------------------------------------------
static inline void CLiburing_setMultishotReceiveLimit(struct io_uring_sqe *sqe, unsigned limit) {
    sqe->file_index = limit;
}

/// Asks the CPU to bring the first two cache lines of the object at `address` in for writing,
/// without waiting for them: the objects of a batch of completions are fetched side by side
/// instead of one miss after another.
static inline void CLiburing_prefetch_object(const void *address) {
    __builtin_prefetch(address, 1, 3);
    __builtin_prefetch((const char *)address + 64, 1, 3);
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

// ---------------------------------------------------------------------------------------------
// epoll, for the backend that emulates io_uring's queues where io_uring is refused. struct
// epoll_event is packed on x86-64; these accessors keep Swift away from its layout.
// ---------------------------------------------------------------------------------------------

/// Registers `descriptor` with `epoll` (EPOLL_CTL_ADD, or EPOLL_CTL_MOD when it already is) for
/// `events`, tagged `data`. 0 or -errno.
static inline int CLiburing_epoll_register(int epoll, int descriptor, uint32_t events, uint64_t data) {
    struct epoll_event event;
    __builtin_memset(&event, 0, sizeof(event));
    event.events = events;
    event.data.u64 = data;
    if (epoll_ctl(epoll, EPOLL_CTL_ADD, descriptor, &event) == 0) return 0;
    if (errno == EEXIST && epoll_ctl(epoll, EPOLL_CTL_MOD, descriptor, &event) == 0) return 0;
    return -errno;
}

/// Removes `descriptor` from `epoll`. 0 or -errno.
static inline int CLiburing_epoll_unregister(int epoll, int descriptor) {
    struct epoll_event event;
    __builtin_memset(&event, 0, sizeof(event));
    return epoll_ctl(epoll, EPOLL_CTL_DEL, descriptor, &event) == 0 ? 0 : -errno;
}

/// Waits for events on `epoll` for at most `timeout_ns` nanoseconds (-1: no limit) with
/// epoll_pwait2 (5.11), or with epoll_wait rounded up to milliseconds when `use_pwait2` is 0.
/// Returns the number of events, or -errno (-ENOSYS or -EPERM when epoll_pwait2 is missing or
/// filtered by seccomp).
static inline int CLiburing_epoll_wait(
    int epoll, struct epoll_event *events, int capacity, long long timeout_ns, int use_pwait2
) {
    int result;
    if (use_pwait2) {
        struct timespec timeout = { (time_t)(timeout_ns / 1000000000LL), (long)(timeout_ns % 1000000000LL) };
        result = (int)syscall(SYS_epoll_pwait2, epoll, events, capacity, timeout_ns < 0 ? NULL : &timeout, NULL, 8);
    } else {
        long long milliseconds = timeout_ns < 0 ? -1 : (timeout_ns + 999999LL) / 1000000LL;
        if (milliseconds > 0x7fffffffLL) milliseconds = 0x7fffffffLL;
        result = epoll_wait(epoll, events, capacity, (int)milliseconds);
    }
    return result < 0 ? -errno : result;
}

/// accept4(2), which glibc declares only under _GNU_SOURCE: -1 with errno on failure.
static inline int CLiburing_accept4(int descriptor, struct sockaddr *address, socklen_t *length, int flags) {
    return (int)syscall(SYS_accept4, descriptor, address, length, flags);
}

/// The size of struct epoll_event (12 on x86-64, where it is packed).
static const size_t CLiburing_epoll_event_size = sizeof(struct epoll_event);

/// The events and the tag of `events[index]`.
static inline uint32_t CLiburing_epoll_event_flags(const struct epoll_event *events, int index) {
    return events[index].events;
}
static inline uint64_t CLiburing_epoll_event_data(const struct epoll_event *events, int index) {
    return events[index].data.u64;
}

static const uint32_t CLiburing_EPOLLIN = EPOLLIN;
static const uint32_t CLiburing_EPOLLOUT = EPOLLOUT;
static const uint32_t CLiburing_EPOLLRDHUP = EPOLLRDHUP;
static const uint32_t CLiburing_EPOLLPRI = EPOLLPRI;
static const uint32_t CLiburing_EPOLLERR = EPOLLERR;
static const uint32_t CLiburing_EPOLLHUP = EPOLLHUP;
static const uint32_t CLiburing_EPOLLET = EPOLLET;

/// The number of the futex system call (what a thread blocked on a pthread mutex is in).
static const long CLiburing_SYS_futex = SYS_futex;

/// The calling thread's kernel thread ID (gettid, which glibc declares only with _GNU_SOURCE).
static inline int CLiburing_thread_id(void) {
    return (int)syscall(SYS_gettid);
}

#endif // CLIBURING_H
