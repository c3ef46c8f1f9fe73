#ifndef CRINGPORT_THREAD_H
#define CRINGPORT_THREAD_H

// The calling thread's pool worker, as a C thread-local variable: Swift has no thread-locals of
// its own, and the alternative, a pthread key, costs a lazy global's initialisation check and a
// call into libc on every look-up (three per echoed message on a server, six on an async
// connection). One variable for the process, defined in ThreadState.c; the accessors below
// are inlined into their Swift callers.
//
// initial-exec: a fixed offset from the thread pointer, without a call to __tls_get_addr. The
// variable is 8 bytes; a library loaded with dlopen takes them from glibc's reserve for that.

extern __thread void *CRingPortThread_poolWorker __attribute__((tls_model("initial-exec")));

/// The calling thread's pool worker (an unretained CompletionWorker), or NULL.
static inline void *CRingPortThread_getPoolWorker(void) {
    return CRingPortThread_poolWorker;
}

/// Names `worker` (NULL: none) as the calling thread's pool worker.
static inline void CRingPortThread_setPoolWorker(void *worker) {
    CRingPortThread_poolWorker = worker;
}

#endif
