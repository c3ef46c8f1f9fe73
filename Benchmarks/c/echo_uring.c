/*
 * echo_uring.c - single-ring liburing TCP echo server.
 *
 * The reference for what one io_uring (one thread) can do for an echo
 * workload, written against liburing 2.3:
 *
 *   - one multishot accept on the listening socket;
 *   - one multishot recv per connection, taking its buffers from a provided
 *     buffer ring (registered by hand: liburing 2.3 has no
 *     io_uring_setup_buf_ring, so the ring memory is mmap()ed here, then
 *     io_uring_buf_ring_init / io_uring_register_buf_ring /
 *     io_uring_buf_ring_add / io_uring_buf_ring_advance);
 *   - the received bytes are sent straight from the provided buffer, and the
 *     buffer goes back to the ring only when its send has fully completed
 *     (short sends are resubmitted for the remainder);
 *   - at most one send in flight per connection, so echoed bytes stay in
 *     order; buffers received meanwhile wait in a per-connection FIFO, and
 *     when several are waiting the next send is one sendmsg covering up to
 *     MAX_IOV of them (a plain send when there is just one);
 *   - -ENOBUFS (ring empty) ends the multishot recv: the connection is parked
 *     and re-armed once buffers have been returned; any other end of a
 *     multishot (no IORING_CQE_F_MORE) is re-armed or treated as EOF/error;
 *   - IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, falling back
 *     to COOP_TASKRUN on kernels that reject them;
 *   - io_uring_submit_and_wait() + io_uring_peek_batch_cqe() loop, returned
 *     buffers published to the kernel once per batch;
 *   - SIGINT/SIGTERM arrive through a signalfd polled by the ring; on the
 *     way out a line of counters (CQEs, recvs, sends, -ENOBUFS, ...) goes to
 *     stderr.
 *
 * Usage: echo_uring [--host 127.0.0.1] [--port 8888] [--buffers 1024]
 *                   [--buffer-size 65536] [--coop] [--fixed-files]
 *
 * Buffer sizing: 64 KiB buffers match echo_epoll's 64 KiB reads; with 16 KiB
 * ones, 16 KiB x depth-16 echo ran ~40% slower here (the client, the
 * bottleneck, got slower).  The ring hands buffers out in FIFO order, so the
 * whole pool is the cache working set: fewer buffers cost less CPU per byte,
 * but a pool too small for the number of busy connections shows up as
 * -ENOBUFS re-arms (counted at exit).  1024 x 64 KiB (64 MiB) is a middle.
 * Build: gcc -O2 -Wall -Wextra -o echo_uring echo_uring.c -luring
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <liburing.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define SQ_ENTRIES 2048
#define CQ_ENTRIES (8 * SQ_ENTRIES)  /* multishot requests post many CQEs per SQE */
#define CQE_BATCH 256
#define BGID 0                       /* our single provided-buffer group */
#define MAX_IOV 16                   /* buffers coalesced into one sendmsg */

/*
 * user_data layout (64 bits):
 *
 *   63                              32 31                  8 7        0
 *  +----------------------------------+---------------------+----------+
 *  |   file descriptor (connections)  |   zero (reserved)   |    op    |
 *  +----------------------------------+---------------------+----------+
 *
 * op is one of enum op.  The fd field is the connection's socket for
 * OP_RECV and OP_SEND and 0 otherwise.  Keying completions by fd is safe
 * because a connection's fd is closed only after the last CQE that can name
 * it has been reaped (multishot recv finished, no send in flight), so a
 * reused fd number never receives a stale completion.
 */
enum op {
    OP_IGNORE = 0,                   /* completions we do not care about (cancel) */
    OP_ACCEPT = 1,                   /* multishot accept on the listener */
    OP_RECV = 2,                     /* multishot recv with buffer select */
    OP_SEND = 3,                     /* send from a provided buffer */
    OP_SIGNAL = 4,                   /* poll on the signalfd */
};

static inline uint64_t ud_make(enum op op, int fd) { return ((uint64_t)(uint32_t)fd << 32) | op; }
static inline enum op ud_op(uint64_t ud) { return (enum op)(ud & 0xff); }
static inline int ud_fd(uint64_t ud) { return (int)(uint32_t)(ud >> 32); }

/*
 * Connection state.  Buffers waiting to be echoed form a FIFO linked through
 * buf_next[]; head_off bytes of q_head have already been sent.  While a send
 * is in flight, the kernel reads from the first send_bufs buffers of the
 * FIFO, so those must not be recycled before its completion.
 *
 * Lifetime: the struct (and fd) is released in conn_maybe_close() once no
 * recv is armed and no send is in flight, and either the connection failed
 * or the peer sent EOF and everything has been echoed.
 */
struct conn {
    int fd;
    bool recv_armed;                 /* a multishot recv is outstanding */
    bool send_busy;                  /* a send is outstanding */
    uint8_t send_bufs;               /* buffers the outstanding send covers */
    bool eof;                        /* peer finished sending */
    bool failed;                     /* error: discard data, close when idle */
    bool starved;                    /* recv ended with -ENOBUFS, waiting for buffers */
    int32_t q_head, q_tail;          /* buffer ids, -1 when empty */
    uint32_t head_off;
    struct msghdr msg;               /* for sendmsg: must live until completion */
    struct iovec iov[MAX_IOV];
};

static struct io_uring ring;
static int listen_fd = -1;
static bool running = true;
/* --fixed-files: connections are accepted straight into a registered file table (direct
 * descriptors; c->fd is then a slot) and every request names them with IOSQE_FIXED_FILE, so
 * the kernel looks no file up per request. TCP_NODELAY is set on the listener and inherited. */
static bool fixed_files;
static const unsigned FIXED_SLOTS = 16384;

/* Counters printed at exit: cheap, and they show what the server actually did. */
static struct {
    uint64_t loops, cqes, recvs, sends, sendmsgs, short_sends, enobufs, rearms;
} stats;

/* Provided buffer ring. */
static struct io_uring_buf_ring *br;
static size_t br_bytes;
static char *bufs;                   /* nbufs * buf_size bytes of buffer memory */
static unsigned nbufs = 1024, buf_size = 65536;
static int br_mask;
static int br_pending;               /* buffers added but not yet published */
static unsigned bufs_in_ring;        /* buffers the kernel can currently pick */
static uint32_t *buf_len;            /* bytes received into each buffer */
static int32_t *buf_next;            /* FIFO link of each queued buffer */

/* Connections by fd, and fds parked on -ENOBUFS. */
static struct conn **conns;
static size_t conns_cap;
static int *starved;
static size_t n_starved, starved_cap;

static void die(const char *what, int err)
{
    fprintf(stderr, "echo_uring: %s: %s\n", what, strerror(err));
    exit(1);
}

/* ------------------------------------------------------------------------ */
/* Submission helpers                                                       */
/* ------------------------------------------------------------------------ */

static struct io_uring_sqe *get_sqe(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    while (sqe == NULL) {            /* SQ full: hand what we have to the kernel */
        int ret = io_uring_submit(&ring);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
            die("io_uring_submit", -ret);
        sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
}

static void arm_accept(void)
{
    struct io_uring_sqe *sqe = get_sqe();
    if (fixed_files)
        io_uring_prep_multishot_accept_direct(sqe, listen_fd, NULL, NULL, 0);
    else
        io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ud_make(OP_ACCEPT, 0));
}

static void arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT | (fixed_files ? IOSQE_FIXED_FILE : 0);
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, c->fd));
    c->recv_armed = true;
}

static inline char *buf_addr(unsigned bid)
{
    return bufs + (size_t)bid * buf_size;
}

/*
 * Send what is queued, starting head_off bytes into the head buffer: a plain
 * send for a single buffer, otherwise one sendmsg over up to MAX_IOV buffers.
 */
static void start_send(struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe();
    unsigned bid = (unsigned)c->q_head;
    if (buf_next[bid] < 0) {
        io_uring_prep_send(sqe, c->fd, buf_addr(bid) + c->head_off,
                           buf_len[bid] - c->head_off, MSG_NOSIGNAL);
        stats.sends++;
        c->send_bufs = 1;
    } else {
        unsigned n = 0;
        for (int32_t b = c->q_head; b >= 0 && n < MAX_IOV; b = buf_next[b], n++) {
            uint32_t off = n == 0 ? c->head_off : 0;
            c->iov[n].iov_base = buf_addr((unsigned)b) + off;
            c->iov[n].iov_len = buf_len[b] - off;
        }
        memset(&c->msg, 0, sizeof c->msg);
        c->msg.msg_iov = c->iov;
        c->msg.msg_iovlen = n;
        io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
        stats.sendmsgs++;
        c->send_bufs = (uint8_t)n;
    }
    if (fixed_files)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, c->fd));
    c->send_busy = true;
}

/* ------------------------------------------------------------------------ */
/* Provided buffers                                                         */
/* ------------------------------------------------------------------------ */

static void bufring_setup(void)
{
    /* The ring itself: nbufs entries of struct io_uring_buf, page aligned. */
    br_bytes = (size_t)nbufs * sizeof(struct io_uring_buf);
    br = mmap(NULL, br_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED)
        die("mmap buffer ring", errno);
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg = {
        .ring_addr = (uint64_t)(uintptr_t)br,
        .ring_entries = nbufs,
        .bgid = BGID,
    };
    int ret = io_uring_register_buf_ring(&ring, &reg, 0);
    if (ret < 0)
        die("io_uring_register_buf_ring", -ret);

    /* The buffer memory, and our per-buffer bookkeeping. */
    bufs = mmap(NULL, (size_t)nbufs * buf_size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    buf_len = calloc(nbufs, sizeof *buf_len);
    buf_next = calloc(nbufs, sizeof *buf_next);
    if (bufs == MAP_FAILED || !buf_len || !buf_next)
        die("buffer memory", ENOMEM);

    br_mask = io_uring_buf_ring_mask(nbufs);
    for (unsigned i = 0; i < nbufs; i++)
        io_uring_buf_ring_add(br, buf_addr(i), buf_size, (unsigned short)i, br_mask, (int)i);
    io_uring_buf_ring_advance(br, (int)nbufs);
    bufs_in_ring = nbufs;
}

/* Queue a buffer for return to the kernel; it becomes visible at buf_publish(). */
static void buf_recycle(unsigned bid)
{
    io_uring_buf_ring_add(br, buf_addr(bid), buf_size, (unsigned short)bid, br_mask, br_pending++);
}

/* Publish all recycled buffers with a single tail update. */
static void buf_publish(void)
{
    if (br_pending == 0)
        return;
    io_uring_buf_ring_advance(br, br_pending);
    bufs_in_ring += (unsigned)br_pending;
    br_pending = 0;
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */
/* ------------------------------------------------------------------------ */

static void queue_push(struct conn *c, unsigned bid, unsigned len)
{
    buf_len[bid] = len;
    buf_next[bid] = -1;
    if (c->q_tail < 0)
        c->q_head = (int32_t)bid;
    else
        buf_next[c->q_tail] = (int32_t)bid;
    c->q_tail = (int32_t)bid;
}

/* Remove the head buffer and give it back to the ring. */
static void queue_pop(struct conn *c)
{
    unsigned bid = (unsigned)c->q_head;
    c->q_head = buf_next[bid];
    if (c->q_head < 0)
        c->q_tail = -1;
    c->head_off = 0;
    buf_recycle(bid);
}

/* Recycle every queued buffer except those the kernel is still sending from. */
static void queue_drop(struct conn *c)
{
    if (!c->send_busy) {
        while (c->q_head >= 0)
            queue_pop(c);
        return;
    }
    /* Keep the first send_bufs buffers, cut the list after them. */
    int32_t last = c->q_head;
    for (unsigned i = 1; i < c->send_bufs; i++)
        last = buf_next[last];
    int32_t bid = buf_next[last];
    buf_next[last] = -1;
    c->q_tail = last;
    while (bid >= 0) {
        int32_t next = buf_next[bid];
        buf_recycle((unsigned)bid);
        bid = next;
    }
}

static void conn_open(int fd)
{
    if ((size_t)fd >= conns_cap) {
        size_t cap = conns_cap ? conns_cap : 1024;
        while (cap <= (size_t)fd)
            cap *= 2;
        struct conn **n = realloc(conns, cap * sizeof *n);
        if (!n)
            die("realloc", ENOMEM);
        memset(n + conns_cap, 0, (cap - conns_cap) * sizeof *n);
        conns = n;
        conns_cap = cap;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        die("calloc", ENOMEM);
    c->fd = fd;
    c->q_head = c->q_tail = -1;
    int one = 1;
    if (!fixed_files)                /* a direct descriptor inherited it from the listener */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conns[fd] = c;
    arm_recv(c);
}

static void conn_maybe_close(struct conn *c)
{
    if (c->recv_armed || c->send_busy)
        return;                      /* CQEs naming this fd are still to come */
    if (!c->failed && !(c->eof && c->q_head < 0))
        return;
    queue_drop(c);                   /* nothing in flight: recycles all */
    conns[c->fd] = NULL;
    if (fixed_files) {               /* nothing is in flight: free the slot */
        int slot = c->fd;
        io_uring_register_files_update(&ring, (unsigned)slot, &(int){ -1 }, 1);
    } else {
        close(c->fd);                /* synchronous close: nothing is in flight */
    }
    free(c);
}

/* Error: stop receiving, drop pending data, close as soon as the kernel is done with it. */
static void conn_fail(struct conn *c)
{
    if (c->failed)
        return;
    c->failed = true;
    queue_drop(c);
    if (c->recv_armed) {
        /* End the multishot recv; its final CQE then lets us close. */
        struct io_uring_sqe *sqe = get_sqe();
        io_uring_prep_cancel64(sqe, ud_make(OP_RECV, c->fd), 0);
        io_uring_sqe_set_data64(sqe, ud_make(OP_IGNORE, 0));
    }
    conn_maybe_close(c);
}

static void park_starved(struct conn *c)
{
    if (c->starved)
        return;
    if (n_starved == starved_cap) {
        starved_cap = starved_cap ? 2 * starved_cap : 256;
        starved = realloc(starved, starved_cap * sizeof *starved);
        if (!starved)
            die("realloc", ENOMEM);
    }
    starved[n_starved++] = c->fd;
    c->starved = true;
}

/*
 * Re-arm parked connections, at most one per buffer now in the ring (more
 * would only hit -ENOBUFS again).  Entries whose connection has meanwhile
 * gone (or whose fd now belongs to a new, unparked connection) are skipped.
 */
static void rearm_starved(void)
{
    size_t i = 0, kept = 0;
    unsigned budget = bufs_in_ring;
    for (; i < n_starved && budget > 0; i++) {
        struct conn *c = conns[starved[i]];
        if (c == NULL || !c->starved)
            continue;
        c->starved = false;
        if (!c->failed && !c->eof && !c->recv_armed) {
            arm_recv(c);
            budget--;
        }
    }
    for (; i < n_starved; i++)       /* keep the rest for later, in order */
        starved[kept++] = starved[i];
    n_starved = kept;
}

/* ------------------------------------------------------------------------ */
/* Completions                                                              */
/* ------------------------------------------------------------------------ */

static void on_accept(int res, unsigned flags)
{
    if (res >= 0) {
        conn_open(res);
    } else {
        static unsigned reported;
        if (reported++ < 10)
            fprintf(stderr, "echo_uring: accept: %s\n", strerror(-res));
    }
    /* Re-arm when the multishot accept ended (e.g. on -EMFILE; it is then
     * retried straight away, which is crude but keeps the server reachable). */
    if (!(flags & IORING_CQE_F_MORE) && running)
        arm_accept();
}

static void on_recv(struct conn *c, int res, unsigned flags)
{
    if (res > 0) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        bufs_in_ring--;
        stats.recvs++;
        if (c->failed) {
            buf_recycle(bid);
        } else {
            queue_push(c, bid, (unsigned)res);
            if (!c->send_busy)
                start_send(c);
        }
    }
    if (flags & IORING_CQE_F_MORE)
        return;                      /* the multishot recv is still armed */

    /* The multishot recv is over.  Careful: the close paths may free c. */
    c->recv_armed = false;
    if (c->failed) {
        conn_maybe_close(c);         /* cancelled or ended after an error */
    } else if (res == -ENOBUFS) {
        stats.enobufs++;
        park_starved(c);             /* ring empty: wait for buffers to come back */
    } else if (res > 0) {
        stats.rearms++;
        arm_recv(c);                 /* ended for another reason, the socket is fine */
    } else if (res == 0) {
        c->eof = true;               /* echo what is queued, then close */
        conn_maybe_close(c);
    } else {
        conn_fail(c);                /* -ECONNRESET etc. */
    }
}

static void on_send(struct conn *c, int res)
{
    c->send_busy = false;
    if (c->failed) {
        queue_drop(c);               /* now including those that were in flight */
        conn_maybe_close(c);
        return;
    }
    if (res <= 0) {                  /* -EPIPE, -ECONNRESET, ... */
        conn_fail(c);
        return;
    }
    /* Fully echoed buffers go back to the ring; a short send leaves a partial head. */
    uint32_t left = (uint32_t)res;
    while (left > 0) {
        uint32_t rest = buf_len[c->q_head] - c->head_off;
        if (left < rest) {
            c->head_off += left;
            stats.short_sends++;
            break;
        }
        left -= rest;
        queue_pop(c);
    }
    if (c->q_head >= 0)
        start_send(c);               /* the rest of a short send, or what queued meanwhile */
    else
        conn_maybe_close(c);
}

static void handle_cqe(const struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    int fd = ud_fd(ud);
    struct conn *c;

    switch (ud_op(ud)) {
    case OP_ACCEPT:
        on_accept(cqe->res, cqe->flags);
        break;
    case OP_RECV:
        c = (size_t)fd < conns_cap ? conns[fd] : NULL;
        if (c == NULL) {             /* cannot happen, see the lifetime rules */
            if (cqe->flags & IORING_CQE_F_BUFFER) {
                bufs_in_ring--;
                buf_recycle(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
            }
            break;
        }
        on_recv(c, cqe->res, cqe->flags);
        break;
    case OP_SEND:
        c = (size_t)fd < conns_cap ? conns[fd] : NULL;
        if (c != NULL)
            on_send(c, cqe->res);
        break;
    case OP_SIGNAL:
        running = false;
        break;
    case OP_IGNORE:
        break;
    }
}

/* ------------------------------------------------------------------------ */
/* Setup                                                                    */
/* ------------------------------------------------------------------------ */

static void ring_setup(bool allow_defer)
{
    static const struct { unsigned flags; const char *name; } modes[] = {
        { IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "SINGLE_ISSUER|DEFER_TASKRUN" },
        { IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN, "SINGLE_ISSUER|COOP_TASKRUN" },
        { IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN" },
    };
    int ret = -EINVAL;
    for (size_t i = allow_defer ? 0 : 1; i < sizeof modes / sizeof modes[0]; i++) {
        struct io_uring_params p = { 0 };
        p.flags = modes[i].flags | IORING_SETUP_CQSIZE;
        p.cq_entries = CQ_ENTRIES;
        ret = io_uring_queue_init_params(SQ_ENTRIES, &ring, &p);
        if (ret == 0) {
            fprintf(stderr, "echo_uring: ring set up with %s\n", modes[i].name);
            return;
        }
        if (ret != -EINVAL)          /* -EINVAL: flags unknown to this kernel, try the next set */
            break;
    }
    die("io_uring_queue_init_params", -ret);
}

static int listen_on(const char *host, const char *port)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE }, *ai;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "echo_uring: %s:%s: %s\n", host, port, gai_strerror(gai));
        exit(1);
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket", errno);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
        die("bind", errno);
    if (listen(fd, SOMAXCONN) < 0)
        die("listen", errno);
    freeaddrinfo(ai);
    return fd;
}

static unsigned parse_uint(const char *name, const char *s, unsigned lo, unsigned hi)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "echo_uring: --%s must be in [%u, %u], got '%s'\n", name, lo, hi, s);
        exit(1);
    }
    return (unsigned)v;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "8888";
    bool allow_defer = true;
    static const struct option longopts[] = {
        { "host",        required_argument, NULL, 'h' },
        { "port",        required_argument, NULL, 'p' },
        { "buffers",     required_argument, NULL, 'n' },
        { "buffer-size", required_argument, NULL, 's' },
        { "coop",        no_argument,       NULL, 'c' },
        { "fixed-files", no_argument,       NULL, 'f' },
        { "help",        no_argument,       NULL, 'H' },
        { NULL, 0, NULL, 0 },
    };
    static const char usage[] =
        "usage: echo_uring [--host 127.0.0.1] [--port 8888] [--buffers 1024]\n"
        "                  [--buffer-size 65536] [--coop] [--fixed-files]\n"
        "  --buffers N        provided buffers, a power of two up to 32768\n"
        "  --buffer-size B    bytes per provided buffer\n"
        "  --coop             skip DEFER_TASKRUN (exercise the fallback setup)\n"
        "  --fixed-files      accept into a registered file table (direct descriptors)\n";
    int o;
    while ((o = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = optarg; break;
        case 'n': nbufs = parse_uint("buffers", optarg, 1, 32768); break;
        case 's': buf_size = parse_uint("buffer-size", optarg, 64, 1u << 20); break;
        case 'c': allow_defer = false; break;
        case 'f': fixed_files = true; break;
        case 'H': fputs(usage, stdout); return 0;
        default:  fputs(usage, stderr); return 1;
        }
    }
    if (optind != argc) {
        fputs(usage, stderr);
        return 1;
    }
    if (nbufs & (nbufs - 1)) {
        fprintf(stderr, "echo_uring: --buffers must be a power of two\n");
        return 1;
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);        /* sends use MSG_NOSIGNAL; belt and braces */

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        die("sigprocmask", errno);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        die("signalfd", errno);

    listen_fd = listen_on(host, port);
    ring_setup(allow_defer);
    bufring_setup();
    if (fixed_files) {
        int one = 1;
        setsockopt(listen_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int ret = io_uring_register_files_sparse(&ring, FIXED_SLOTS);
        if (ret < 0)
            die("io_uring_register_files_sparse", -ret);
    }

    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_poll_add(sqe, sfd, POLLIN);
    io_uring_sqe_set_data64(sqe, ud_make(OP_SIGNAL, 0));
    arm_accept();
    fprintf(stderr, "echo_uring: listening on %s:%s (%u x %u-byte buffers)\n",
            host, port, nbufs, buf_size);

    struct io_uring_cqe *cqes[CQE_BATCH];
    while (running) {
        /* Submit everything prepared so far and wait for at least one CQE;
         * with DEFER_TASKRUN this is also where the kernel runs our task work. */
        int ret = io_uring_submit_and_wait(&ring, 1);
        stats.loops++;
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
            die("io_uring_submit_and_wait", -ret);

        unsigned n;
        while (running && (n = io_uring_peek_batch_cqe(&ring, cqes, CQE_BATCH)) > 0) {
            for (unsigned i = 0; i < n; i++)
                handle_cqe(cqes[i]);
            stats.cqes += n;
            io_uring_cq_advance(&ring, n);
        }
        buf_publish();               /* one tail store for all buffers returned above */
        rearm_starved();
    }

    fprintf(stderr, "echo_uring: shutting down: %llu loops, %llu CQEs, %llu recvs, %llu sends, "
            "%llu sendmsgs, %llu short sends, %llu -ENOBUFS, %llu other re-arms\n",
            (unsigned long long)stats.loops, (unsigned long long)stats.cqes,
            (unsigned long long)stats.recvs, (unsigned long long)stats.sends,
            (unsigned long long)stats.sendmsgs, (unsigned long long)stats.short_sends,
            (unsigned long long)stats.enobufs, (unsigned long long)stats.rearms);
    /*
     * Requests still in flight hold references to their sockets, and the
     * kernel drops those only when it tears the ring down, asynchronously,
     * after io_uring_queue_exit().  So shut the sockets down first: the port
     * is free and the peers see EOF right away, not at some later point.
     */
    shutdown(listen_fd, SHUT_RDWR);
    for (size_t fd = 0; fd < conns_cap; fd++)
        if (conns[fd])
            shutdown((int)fd, SHUT_RDWR);
    io_uring_queue_exit(&ring);
    for (size_t fd = 0; fd < conns_cap; fd++) {
        if (conns[fd]) {
            close((int)fd);
            free(conns[fd]);
        }
    }
    free(conns);
    free(starved);
    close(listen_fd);
    close(sfd);
    munmap(bufs, (size_t)nbufs * buf_size);
    munmap(br, br_bytes);
    free(buf_len);
    free(buf_next);
    return 0;
}
