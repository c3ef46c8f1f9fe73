/*
 * echo_epoll.c - classic single-threaded epoll TCP echo server.
 *
 * The baseline the io_uring servers are compared against: level-triggered
 * epoll, non-blocking sockets, TCP_NODELAY, one shared read buffer.  Data is
 * written back immediately; whatever the socket does not take is buffered per
 * connection and flushed on EPOLLOUT, with reading paused while more than
 * HIGH_WATER bytes are waiting (so a client that does not read cannot make us
 * buffer without bound).  A connection is closed on error, and on EOF once
 * everything it sent has been echoed.  SIGINT/SIGTERM (via signalfd) stop the
 * loop; the server then closes everything and exits with status 0.
 *
 * Usage: echo_epoll [--host 127.0.0.1] [--port 8888]
 * Build: gcc -O2 -Wall -Wextra -o echo_epoll echo_epoll.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
#include <unistd.h>

#define READ_BUF (64u << 10)         /* one shared buffer for all reads */
#define READS_PER_EVENT 4            /* bound the work per readiness event (fairness) */
#define HIGH_WATER (1u << 20)        /* pause reading above this much unsent data */
#define MAX_EVENTS 512

struct conn {
    int fd;
    uint32_t events;                 /* currently registered epoll events */
    bool eof;                        /* peer finished sending; close once flushed */
    char *out;                       /* unsent bytes: out[out_off, out_len) */
    size_t out_off, out_len, out_cap;
};

/* epoll data.ptr markers for the two non-connection descriptors. */
static char listener_tag, signal_tag;

static int epfd;
static struct conn **conns;          /* indexed by fd */
static size_t conns_cap;
static char read_buf[READ_BUF];

static void die(const char *what)
{
    fprintf(stderr, "echo_epoll: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int listen_on(const char *host, const char *port)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE }, *ai;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "echo_epoll: %s:%s: %s\n", host, port, gai_strerror(gai));
        exit(1);
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
        die("bind");
    if (listen(fd, SOMAXCONN) < 0)
        die("listen");
    freeaddrinfo(ai);
    return fd;
}

static void set_events(struct conn *c, uint32_t events)
{
    if (c->events == events)
        return;
    struct epoll_event ev = { .events = events, .data.ptr = c };
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->events = events;
}

static void conn_close(struct conn *c)
{
    conns[c->fd] = NULL;
    close(c->fd);                    /* also removes it from the epoll set */
    free(c->out);
    free(c);
}

static void conn_open(int fd)
{
    if ((size_t)fd >= conns_cap) {
        size_t cap = conns_cap ? conns_cap : 1024;
        while (cap <= (size_t)fd)
            cap *= 2;
        struct conn **n = realloc(conns, cap * sizeof *n);
        if (!n)
            die("realloc");
        memset(n + conns_cap, 0, (cap - conns_cap) * sizeof *n);
        conns = n;
        conns_cap = cap;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        die("calloc");
    c->fd = fd;
    c->events = EPOLLIN;
    struct epoll_event ev = { .events = c->events, .data.ptr = c };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
    conns[fd] = c;
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                fprintf(stderr, "echo_epoll: accept: %s\n", strerror(errno));
            return;                  /* EMFILE etc.: level-triggered, retried next round */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_open(fd);
    }
}

/* Append bytes to the connection's output buffer. */
static void out_append(struct conn *c, const char *data, size_t n)
{
    if (c->out_off > 0 && c->out_len + n > c->out_cap) {   /* compact first */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n)
            cap *= 2;
        char *p = realloc(c->out, cap);
        if (!p)
            die("realloc");
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

/* Events wanted in the current state: read unless paused or at EOF, write while data waits. */
static uint32_t wanted_events(const struct conn *c)
{
    size_t pending = c->out_len - c->out_off;
    uint32_t ev = 0;
    if (!c->eof && pending <= HIGH_WATER)
        ev |= EPOLLIN;
    if (pending > 0)
        ev |= EPOLLOUT;
    return ev;
}

/* Write out buffered data; returns false if the connection was closed. */
static bool flush_out(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_close(c);
            return false;
        }
        c->out_off += (size_t)w;
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->eof && c->out_len == 0) {
        conn_close(c);
        return false;
    }
    set_events(c, wanted_events(c));
    return true;
}

static void on_readable(struct conn *c)
{
    for (int i = 0; i < READS_PER_EVENT; i++) {
        ssize_t r = recv(c->fd, read_buf, sizeof read_buf, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_close(c);           /* reset etc.: drop whatever was pending */
            return;
        }
        if (r == 0) {
            c->eof = true;
            break;
        }
        size_t n = (size_t)r, done = 0;
        if (c->out_len == c->out_off) {  /* nothing queued: try to echo straight away */
            ssize_t w = send(c->fd, read_buf, n, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_close(c);
                return;
            }
            done = w > 0 ? (size_t)w : 0;
        }
        if (done < n)
            out_append(c, read_buf + done, n - done);
        if (c->out_len - c->out_off > HIGH_WATER || (size_t)r < sizeof read_buf)
            break;                   /* backpressure, or the socket is drained */
    }
    if (c->eof && c->out_len == c->out_off) {
        conn_close(c);
        return;
    }
    set_events(c, wanted_events(c));
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "8888";
    static const struct option longopts[] = {
        { "host", required_argument, NULL, 'h' },
        { "port", required_argument, NULL, 'p' },
        { "help", no_argument,       NULL, 'H' },
        { NULL, 0, NULL, 0 },
    };
    static const char usage[] = "usage: echo_epoll [--host 127.0.0.1] [--port 8888]\n";
    int o;
    while ((o = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = optarg; break;
        case 'H': fputs(usage, stdout); return 0;
        default:  fputs(usage, stderr); return 1;
        }
    }
    if (optind != argc) {
        fputs(usage, stderr);
        return 1;
    }

    raise_nofile();
    signal(SIGPIPE, SIG_IGN);

    /* SIGINT/SIGTERM arrive through a signalfd watched by the same epoll set. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        die("sigprocmask");
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        die("signalfd");

    int lfd = listen_on(host, port);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &listener_tag };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev) < 0)
        die("epoll_ctl");
    ev.data.ptr = &signal_tag;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev) < 0)
        die("epoll_ctl");
    fprintf(stderr, "echo_epoll: listening on %s:%s\n", host, port);

    static struct epoll_event events[MAX_EVENTS];
    bool running = true;
    while (running) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            uint32_t e = events[i].events;
            if (p == &listener_tag) {
                on_accept(lfd);
            } else if (p == &signal_tag) {
                running = false;
            } else {
                /* A connection closed earlier in this batch cannot appear here:
                 * close() removes it from the set before the next epoll_wait,
                 * and each fd shows up at most once per batch. */
                struct conn *c = p;
                if (e & EPOLLOUT) {
                    if (!flush_out(c))
                        continue;
                }
                if (e & (EPOLLIN | EPOLLHUP | EPOLLERR))
                    on_readable(c);  /* recv() reports any error and closes */
            }
        }
    }

    fprintf(stderr, "echo_epoll: shutting down\n");
    for (size_t fd = 0; fd < conns_cap; fd++)
        if (conns[fd])
            conn_close(conns[fd]);
    free(conns);
    close(lfd);
    close(sfd);
    close(epfd);
    return 0;
}
