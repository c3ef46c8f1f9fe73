/*
 * idle_conns.c - open N TCP connections to a server, have each one echoed
 * once, then hold them all open and idle.
 *
 * For measuring what an idle connection costs a server (bench-conns.sh reads
 * the server's RSS while this holds the connections).  Behaviour:
 *
 *   1. Set-up.  Connects N non-blocking sockets to HOST:PORT, at most
 *      --parallel of them being set up at a time (connecting, or waiting for
 *      their echo), so the server's listen backlog never overflows.  On each
 *      connection, as soon as it is established, one message of --size bytes
 *      is sent and the echo is read back and checked byte for byte: a
 *      connection that merely sits in the server's backlog never completes,
 *      so every counted connection was accepted and served (and the server
 *      touched whatever per-connection buffers it has).  --size 0 sends
 *      nothing (connections then only need to be established).
 *
 *      When HOST is an IPv4 loopback address (127.0.0.0/8), connection i is
 *      bound to source address 127.0.0.(2 + i % K) before connect() (K =
 *      --sources, default 8), with IP_BIND_ADDRESS_NO_PORT so that the
 *      kernel picks the port at connect time from the whole 4-tuple: one
 *      source address alone runs out of ephemeral ports at about 28,000
 *      connections (net.ipv4.ip_local_port_range), less with connections of
 *      earlier runs still in TIME_WAIT.  --sources 0 binds nothing.
 *
 *      The whole set-up must finish within --timeout seconds.
 *
 *   2. Hold.  Prints "ready N" on stdout (flushed) once all N connections
 *      are established and echoed, then holds them, idle, until --hold
 *      seconds have passed, or (without --hold) until standard input reaches
 *      end of file; SIGTERM or SIGINT end the hold in either case.  Anything
 *      the server does to an idle connection meanwhile (data, end of stream,
 *      a reset) counts as a failed connection.
 *
 *   3. Close.  Closes every connection and prints "closed N failed F" on
 *      stdout.
 *
 * RLIMIT_NOFILE is raised to its hard limit first; N + 16 descriptors are
 * needed (raise the hard limit with `ulimit -Hn` as root, if need be).
 *
 * Options:
 *   --host HOST          server address (default 127.0.0.1)
 *   --port PORT          server port (required)
 *   --connections N      connections to open and hold, 1..1000000 (default 10000)
 *   --size BYTES         bytes echoed once per connection, 0..65536 (default 32)
 *   --sources K          spread over source addresses 127.0.0.2 .. 127.0.0.(K+1)
 *                        when HOST is 127.x.y.z; 0: no bind (default 8)
 *   --parallel P         connections being set up at once (default 128)
 *   --timeout SECONDS    limit for the whole set-up (default 60)
 *   --hold SECONDS       hold this long, then close (default: until stdin EOF)
 *
 * Exit status: 0 = every connection was established, echoed and held;
 *              1 = usage or setup error (bad option, address, descriptors);
 *              2 = a connection failed (connect error, wrong or missing echo,
 *                  closed or reset by the server while held) or the set-up
 *                  timed out.  The first failures are described on stderr.
 *
 * Build: gcc -O2 -Wall -Wextra -o idle_conns idle_conns.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROGRAM "idle_conns"
#include "client_util.h"

#define MAX_CONNECTIONS 1000000
#define MAX_SIZE 65536
#define MAX_SOURCES 253              /* 127.0.0.2 .. 127.0.0.254 */

/* ------------------------------------------------------------------------ */
/* Options                                                                  */
/* ------------------------------------------------------------------------ */

static struct {
    const char *host;
    const char *port;
    long connections;
    long size;
    long sources;
    long parallel;
    double timeout;                  /* seconds, set-up */
    double hold;                     /* seconds; < 0: until stdin EOF */
} opt = {
    .host = "127.0.0.1",
    .port = NULL,
    .connections = 10000,
    .size = 32,
    .sources = 8,
    .parallel = 128,
    .timeout = 60.0,
    .hold = -1.0,
};

static void usage(FILE *out)
{
    fprintf(out,
        "usage: idle_conns --port PORT [options]\n"
        "  --host HOST          server address (default 127.0.0.1)\n"
        "  --port PORT          server port (required)\n"
        "  --connections N      connections to open and hold, 1..%d (default 10000)\n"
        "  --size BYTES         bytes echoed once per connection, 0..%d (default 32)\n"
        "  --sources K          source addresses 127.0.0.2..127.0.0.(K+1) for a 127.x HOST,\n"
        "                       0..%d; 0 binds nothing (default 8)\n"
        "  --parallel P         connections being set up at once (default 128)\n"
        "  --timeout SECONDS    limit for the whole set-up (default 60)\n"
        "  --hold SECONDS       hold this long, then close (default: until stdin EOF)\n"
        "Prints \"ready N\" when all are established and echoed, \"closed N failed F\" at the end.\n",
        MAX_CONNECTIONS, MAX_SIZE, MAX_SOURCES);
}

static void parse_options(int argc, char **argv)
{
    enum { O_HOST = 1, O_PORT, O_CONN, O_SIZE, O_SRC, O_PAR, O_TIMEOUT, O_HOLD, O_HELP };
    static const struct option longopts[] = {
        { "host",        required_argument, NULL, O_HOST },
        { "port",        required_argument, NULL, O_PORT },
        { "connections", required_argument, NULL, O_CONN },
        { "size",        required_argument, NULL, O_SIZE },
        { "sources",     required_argument, NULL, O_SRC },
        { "parallel",    required_argument, NULL, O_PAR },
        { "timeout",     required_argument, NULL, O_TIMEOUT },
        { "hold",        required_argument, NULL, O_HOLD },
        { "help",        no_argument,       NULL, O_HELP },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_HOST:    opt.host = optarg; break;
        case O_PORT:    opt.port = optarg; break;
        case O_CONN:    opt.connections = parse_long("connections", optarg, 1, MAX_CONNECTIONS); break;
        case O_SIZE:    opt.size = parse_long("size", optarg, 0, MAX_SIZE); break;
        case O_SRC:     opt.sources = parse_long("sources", optarg, 0, MAX_SOURCES); break;
        case O_PAR:     opt.parallel = parse_long("parallel", optarg, 1, 65536); break;
        case O_TIMEOUT: opt.timeout = parse_seconds("timeout", optarg, 0.001); break;
        case O_HOLD:    opt.hold = parse_seconds("hold", optarg, 0.0); break;
        case O_HELP:    usage(stdout); exit(0);
        default:        usage(stderr); exit(1);
        }
    }
    if (optind != argc || opt.port == NULL) {
        usage(stderr);
        exit(1);
    }
}

/* ------------------------------------------------------------------------ */
/* State                                                                    */
/* ------------------------------------------------------------------------ */

enum conn_state {
    C_NEW = 0,                       /* not started yet */
    C_CONNECTING,                    /* connect() in progress */
    C_ECHOING,                       /* message (partly) sent, echo not complete */
    C_IDLE,                          /* established and echoed: held */
    C_DONE,                          /* closed (failed) */
};

struct conn {
    int fd;
    uint8_t state;                   /* enum conn_state */
    uint32_t tx_off;                 /* bytes of the message sent */
    uint32_t rx_off;                 /* bytes of the echo received and checked */
};

static struct {
    int epfd;
    struct conn *conns;
    long started;                    /* connections started (index of the next one) */
    long in_setup;                   /* connections CONNECTING or ECHOING */
    long idle;                       /* connections IDLE */
    long failed;
    struct sockaddr_storage dst;
    socklen_t dst_len;
    bool spread;                     /* bind source addresses */
    uint32_t source_base;            /* host order: the first source, 127.0.0.2 */
} st;

/* Byte j of connection i's message: depends on both, so a misrouted echo is caught. */
static inline uint8_t msg_byte(uint32_t i, uint32_t j)
{
    uint64_t z = (uint64_t)i * 0x9E3779B97F4A7C15ull + j;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    return (uint8_t)(z >> 24);
}

static void conn_fail(long i, const char *why, int err)
{
    struct conn *c = &st.conns[i];
    if (st.failed < 10)
        fprintf(stderr, "idle_conns: connection %ld: %s%s%s\n", i, why,
                err ? ": " : "", err ? strerror(err) : "");
    if (st.failed == 9)
        fprintf(stderr, "idle_conns: (further failures not shown)\n");
    st.failed++;
    if (c->state == C_CONNECTING || c->state == C_ECHOING)
        st.in_setup--;
    else if (c->state == C_IDLE)
        st.idle--;
    if (c->fd >= 0)
        close(c->fd);                /* also leaves the epoll set */
    c->fd = -1;
    c->state = C_DONE;
}

static void conn_set_events(long i, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.u64 = (uint64_t)i };
    if (epoll_ctl(st.epfd, EPOLL_CTL_MOD, st.conns[i].fd, &ev) < 0) {
        perror("idle_conns: epoll_ctl");
        exit(1);
    }
}

static void conn_became_idle(long i)
{
    st.conns[i].state = C_IDLE;
    st.in_setup--;
    st.idle++;
    conn_set_events(i, EPOLLIN | EPOLLRDHUP);
}

/* Sends what is left of the message; waits for the echo once it is all out. */
static void conn_send(long i)
{
    struct conn *c = &st.conns[i];
    uint8_t buf[MAX_SIZE];
    uint32_t n = (uint32_t)opt.size - c->tx_off, pos = 0;
    for (uint32_t j = 0; j < n; j++)
        buf[j] = msg_byte((uint32_t)i, c->tx_off + j);
    while (n > 0) {
        ssize_t w = send(c->fd, buf + pos, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                conn_set_events(i, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
                return;
            }
            conn_fail(i, "send", errno);
            return;
        }
        c->tx_off += (uint32_t)w;
        pos += (uint32_t)w;
        n -= (uint32_t)w;
    }
    conn_set_events(i, EPOLLIN | EPOLLRDHUP);
}

/* The connect finished (the socket became writable). */
static void conn_connected(long i)
{
    struct conn *c = &st.conns[i];
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        conn_fail(i, "connect", err);
        return;
    }
    if (opt.size == 0) {
        conn_became_idle(i);
        return;
    }
    c->state = C_ECHOING;
    conn_send(i);
}

/* Readable: the echo while setting up; anything at all on a held connection is a failure. */
static void conn_readable(long i)
{
    struct conn *c = &st.conns[i];
    uint8_t buf[4096];
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof buf, 0);
        if (r > 0) {
            if (c->state != C_ECHOING || c->rx_off + (uint32_t)r > c->tx_off) {
                conn_fail(i, c->state == C_IDLE ? "data from the server on an idle connection"
                                                : "more bytes echoed than were sent", 0);
                return;
            }
            for (ssize_t j = 0; j < r; j++) {
                if (buf[j] != msg_byte((uint32_t)i, c->rx_off + (uint32_t)j)) {
                    conn_fail(i, "echoed bytes differ from the bytes sent", 0);
                    return;
                }
            }
            c->rx_off += (uint32_t)r;
            if (c->rx_off == (uint32_t)opt.size) {
                conn_became_idle(i);
                return;
            }
        } else if (r == 0) {
            conn_fail(i, c->state == C_IDLE ? "closed by the server while held"
                                            : "closed by the server before the echo", 0);
            return;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else {
            conn_fail(i, "recv", errno);
            return;
        }
    }
}

/* Starts connection i: socket, optional bind to its source address, non-blocking connect. */
static void conn_start(long i)
{
    struct conn *c = &st.conns[i];
    c->fd = socket(st.dst.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fprintf(stderr, "idle_conns: socket (connection %ld): %s\n", i, strerror(errno));
        exit(1);                     /* descriptors or memory: a setup error, not the server's */
    }
    c->state = C_CONNECTING;
    st.in_setup++;
    if (st.spread) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = { .sin_family = AF_INET, .sin_port = 0 };
        src.sin_addr.s_addr = htonl(st.source_base + (uint32_t)(i % opt.sources));
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) {
            conn_fail(i, "bind to the source address", errno);
            return;
        }
    }
    struct epoll_event ev = { .events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)i };
    if (epoll_ctl(st.epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        perror("idle_conns: epoll_ctl");
        exit(1);
    }
    if (connect(c->fd, (struct sockaddr *)&st.dst, st.dst_len) < 0 && errno != EINPROGRESS) {
        conn_fail(i, errno == EADDRNOTAVAIL ? "connect (out of source ports: try more --sources)"
                                            : "connect", errno);
        return;
    }
    /* Established or not, EPOLLOUT reports the end of the connect. */
}

static void handle_event(long i, uint32_t events)
{
    struct conn *c = &st.conns[i];
    switch (c->state) {
    case C_CONNECTING:
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            conn_connected(i);
        break;
    case C_ECHOING:
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
            conn_readable(i);
        if (c->state == C_ECHOING && (events & EPOLLOUT) && c->tx_off < (uint32_t)opt.size)
            conn_send(i);
        break;
    case C_IDLE:
        conn_readable(i);            /* reports the data, the EOF or the error */
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------------------ */
/* Main                                                                     */
/* ------------------------------------------------------------------------ */

static void resolve(void)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
    int gai = getaddrinfo(opt.host, opt.port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "idle_conns: %s:%s: %s\n", opt.host, opt.port, gai_strerror(gai));
        exit(1);
    }
    memcpy(&st.dst, ai->ai_addr, ai->ai_addrlen);
    st.dst_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    if (st.dst.ss_family == AF_INET && opt.sources > 0) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&st.dst;
        st.spread = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
        st.source_base = (127u << 24) | 2u;
    }
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    raise_nofile(opt.connections);
    resolve();

    /* SIGTERM and SIGINT end the hold (and abort the set-up) through a signalfd. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

    st.epfd = epoll_create1(EPOLL_CLOEXEC);
    st.conns = calloc((size_t)opt.connections, sizeof *st.conns);
    if (sigfd < 0 || st.epfd < 0 || !st.conns) {
        perror("idle_conns: setup");
        return 1;
    }
    for (long i = 0; i < opt.connections; i++)
        st.conns[i].fd = -1;
    /* Tags above every connection index: the signalfd and standard input. */
    const uint64_t TAG_SIGNAL = (uint64_t)MAX_CONNECTIONS + 1, TAG_STDIN = TAG_SIGNAL + 1;
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_SIGNAL };
    if (epoll_ctl(st.epfd, EPOLL_CTL_ADD, sigfd, &ev) < 0) {
        perror("idle_conns: epoll_ctl");
        return 1;
    }

    enum { MAX_EVENTS = 512 };
    struct epoll_event events[MAX_EVENTS];
    bool stop = false, timed_out = false;
    uint64_t deadline = now_ns() + (uint64_t)(opt.timeout * 1e9);

    /* Set-up: keep up to --parallel connections in flight until all are idle (or one fails). */
    while (!stop && st.failed == 0 && st.idle < opt.connections) {
        while (st.started < opt.connections && st.in_setup < opt.parallel && st.failed == 0)
            conn_start(st.started++);
        if (st.failed)
            break;
        uint64_t t = now_ns();
        if (t >= deadline) {
            timed_out = true;
            break;
        }
        int n = epoll_wait(st.epfd, events, MAX_EVENTS, (int)((deadline - t + 999999) / 1000000));
        if (n < 0 && errno != EINTR) {
            perror("idle_conns: epoll_wait");
            return 1;
        }
        for (int k = 0; k < n; k++) {
            if (events[k].data.u64 == TAG_SIGNAL)
                stop = true;
            else
                handle_event((long)events[k].data.u64, events[k].events);
        }
    }
    if (timed_out)
        fprintf(stderr, "idle_conns: set-up not finished after %g s: %ld of %ld connections "
                "echoed, %ld in progress\n", opt.timeout, st.idle, opt.connections, st.in_setup);
    else if (stop && st.idle < opt.connections)
        fprintf(stderr, "idle_conns: signalled during set-up (%ld of %ld echoed)\n",
                st.idle, opt.connections);

    /* Hold: until --hold expires, stdin ends (no --hold), or a signal. */
    if (!stop && !timed_out && st.failed == 0) {
        printf("ready %ld\n", st.idle);
        fflush(stdout);
        uint64_t hold_end = 0;
        if (opt.hold >= 0) {
            hold_end = now_ns() + (uint64_t)(opt.hold * 1e9);
        } else {
            ev = (struct epoll_event){ .events = EPOLLIN, .data.u64 = TAG_STDIN };
            if (epoll_ctl(st.epfd, EPOLL_CTL_ADD, STDIN_FILENO, &ev) < 0) {
                /* A regular file (or /dev/null) cannot be polled: it is at EOF at once anyway. */
                stop = true;
            }
        }
        while (!stop) {
            int timeout_ms = -1;
            if (hold_end) {
                uint64_t t = now_ns();
                if (t >= hold_end)
                    break;
                timeout_ms = (int)((hold_end - t + 999999) / 1000000);
            }
            int n = epoll_wait(st.epfd, events, MAX_EVENTS, timeout_ms);
            if (n < 0 && errno != EINTR) {
                perror("idle_conns: epoll_wait");
                return 1;
            }
            for (int k = 0; k < n; k++) {
                uint64_t tag = events[k].data.u64;
                if (tag == TAG_SIGNAL) {
                    stop = true;
                } else if (tag == TAG_STDIN) {
                    char buf[256];
                    ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
                    if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
                        stop = true;
                } else {
                    handle_event((long)tag, events[k].events);
                }
            }
        }
    }

    long closed = 0;
    for (long i = 0; i < opt.connections; i++) {
        if (st.conns[i].fd >= 0) {
            close(st.conns[i].fd);
            closed++;
        }
    }
    printf("closed %ld failed %ld\n", closed, st.failed);
    fflush(stdout);
    free(st.conns);
    close(st.epfd);
    close(sigfd);
    return st.failed || timed_out || st.idle < opt.connections ? 2 : 0;
}
