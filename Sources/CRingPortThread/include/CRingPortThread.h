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

// The task running on the calling thread, as an address (NULL outside a task): the concurrency
// runtime's accessor, the one Swift's `withUnsafeCurrentTask` calls, without the retain and
// release of the task that that function adds (and the copy a comparison made). Declared with
// the runtime's calling convention (swiftcall); never dereferenced.
extern void *swift_task_getCurrent(void) __attribute__((swiftcall));

/// The address of the task running on the calling thread, or NULL.
static inline const void *CRingPortThread_currentTask(void) {
    return swift_task_getCurrent();
}

// A cancellation handler of the running task that covers a whole scope, added and removed
// through the concurrency runtime's entry points, the ones the standard library's
// `withTaskCancellationHandler` calls, so that the scope needs no async frame of its own (the
// standard function's frames took an idle async connection's task past its first allocator
// slab). The handler runs on the cancelling thread (at once, if the task is cancelled already)
// and calls `RingPortAsync_cancellationScopeCancelled` (defined in RingPortAsync) with the
// context. The record lives in the task's allocator: removed before the scope's frame returns.
typedef void (*CRingPortThread_TaskHandler)(void *context __attribute__((swift_context)))
    __attribute__((swiftcall));
extern void *swift_task_addCancellationHandler(CRingPortThread_TaskHandler handler, void *context)
    __attribute__((swiftcall));
extern void swift_task_removeCancellationHandler(void *record) __attribute__((swiftcall));

void RingPortAsync_cancellationScopeCancelled(void *context);

static void CRingPortThread_scopeCancelled(void *context __attribute__((swift_context)))
    __attribute__((swiftcall)) {
    RingPortAsync_cancellationScopeCancelled(context);
}

/// Adds the scope's handler to the running task, for `context`; returns the record to remove.
static inline void *CRingPortThread_addScopeCancellationHandler(void *context) {
    return swift_task_addCancellationHandler(CRingPortThread_scopeCancelled, context);
}

/// Removes the handler that `record` names from the running task.
static inline void CRingPortThread_removeScopeCancellationHandler(void *record) {
    swift_task_removeCancellationHandler(record);
}

#endif
