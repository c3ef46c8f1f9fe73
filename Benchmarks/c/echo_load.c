/*
 * echo_load.c - single-threaded epoll TCP echo load generator.
 *
 * Opens N connections to an echo server and, on each one, keeps D messages of
 * S bytes in flight (D = 1 is classic ping-pong).  Every echoed byte is checked
 * against what was sent, and the round-trip time of every message (from the
 * moment its first byte is handed to send() to the moment its last byte comes
 * back from recv()) is recorded in a log-linear histogram.
 *
 * Only messages that complete inside the measured window, i.e. after the
 * warm-up and before warm-up + duration, count towards throughput and
 * latency.  Errors (corrupted echoes, unexpected EOF or socket errors, data
 * nobody asked for) are counted over the whole run; any error makes the exit
 * status 2.
 *
 * Output (one line):
 *   msgs/s=... MB/s=... p50_us=... p90_us=... p99_us=... p999_us=... max_us=... errors=...
 * or, with --json, one JSON object with the same keys plus a few extra ones
 * describing the run (msgs, connections, size, depth, duration_s).
 * MB/s is the echoed payload in one direction, in 10^6 bytes per second.
 *
 * Exit status: 0 = success, 1 = usage or setup error, 2 = errors were counted.
 *
 * Byte pattern: byte j of message `seq` on connection `idx` is
 *     pattern[off + j] ^ x,   where h = mix(idx, seq), off = h & 255, x = (h >> 8) & 255
 * and `pattern` is a fixed pseudo-random table of size + 256 bytes.  This is
 * cheap to generate and to check (a word at a time), varies with the
 * (connection, message) pair (65536 variants, so misrouted or replayed data
 * is caught), and lets any byte be regenerated from its position alone, so
 * no copy of sent data is kept.
 *
 * All connections are established (non-blocking connect, 5 s timeout each,
 * TCP_NODELAY) before the clock starts; RLIMIT_NOFILE is raised to its hard
 * limit first.  At most 20000 connections.
 *
 * Build: gcc -O2 -Wall -Wextra -o echo_load echo_load.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
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
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROGRAM "echo_load"
#include "client_util.h"

#define MAX_CONNECTIONS 20000
#define MAX_DEPTH 4096
#define MAX_SIZE (64u << 20)         /* 64 MiB per message is plenty */
#define IO_CHUNK (256u << 10)        /* scratch buffer for one send()/recv() */
#define CONNECT_TIMEOUT_MS 5000

/* ------------------------------------------------------------------------ */
/* Options                                                                  */
/* ------------------------------------------------------------------------ */

static struct {
    const char *host;
    const char *port;
    long connections;
    long size;
    long depth;
    double duration;                 /* seconds */
    double warmup;                   /* seconds */
    bool json;
} opt = {
    .host = "127.0.0.1",
    .port = NULL,
    .connections = 64,
    .size = 128,
    .depth = 1,
    .duration = 10.0,
    .warmup = 1.0,
    .json = false,
};

static void usage(FILE *out)
{
    fprintf(out,
        "usage: echo_load --port PORT [options]\n"
        "  --host HOST          server address (default 127.0.0.1)\n"
        "  --port PORT          server port (required)\n"
        "  --connections N      concurrent connections, 1..%d (default 64)\n"
        "  --size BYTES         message size (default 128)\n"
        "  --depth D            messages in flight per connection (default 1)\n"
        "  --duration SECONDS   measured window (default 10)\n"
        "  --warmup SECONDS     warm-up before measuring, may be 0 (default 1)\n"
        "  --json               print a JSON object instead of key=value text\n",
        MAX_CONNECTIONS);
}

static void parse_options(int argc, char **argv)
{
    enum { O_HOST = 1, O_PORT, O_CONN, O_SIZE, O_DEPTH, O_DUR, O_WARM, O_JSON, O_HELP };
    static const struct option longopts[] = {
        { "host",        required_argument, NULL, O_HOST },
        { "port",        required_argument, NULL, O_PORT },
        { "connections", required_argument, NULL, O_CONN },
        { "size",        required_argument, NULL, O_SIZE },
        { "depth",       required_argument, NULL, O_DEPTH },
        { "duration",    required_argument, NULL, O_DUR },
        { "warmup",      required_argument, NULL, O_WARM },
        { "json",        no_argument,       NULL, O_JSON },
        { "help",        no_argument,       NULL, O_HELP },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_HOST:  opt.host = optarg; break;
        case O_PORT:  opt.port = optarg; break;
        case O_CONN:
            /* Accept any positive number here so the limit gets its own message. */
            opt.connections = parse_long("connections", optarg, 1, 1L << 30);
            if (opt.connections > MAX_CONNECTIONS) {
                fprintf(stderr, "echo_load: refusing %ld connections (maximum %d)\n",
                        opt.connections, MAX_CONNECTIONS);
                exit(1);
            }
            break;
        case O_SIZE:  opt.size = parse_long("size", optarg, 1, MAX_SIZE); break;
        case O_DEPTH: opt.depth = parse_long("depth", optarg, 1, MAX_DEPTH); break;
        case O_DUR:   opt.duration = parse_seconds("duration", optarg, 0.001); break;
        case O_WARM:  opt.warmup = parse_seconds("warmup", optarg, 0.0); break;
        case O_JSON:  opt.json = true; break;
        case O_HELP:  usage(stdout); exit(0);
        default:      usage(stderr); exit(1);
        }
    }
    if (optind != argc || opt.port == NULL) {
        usage(stderr);
        exit(1);
    }
}

/* ------------------------------------------------------------------------ */
/* Clock and histogram                                                      */
/* ------------------------------------------------------------------------ */

/*
 * Log-linear histogram of nanosecond values, in the spirit of HdrHistogram.
 * Values below 2^(SUB_BITS+1) get one bucket each; above that every power of
 * two [2^k, 2^(k+1)) is split into 2^SUB_BITS equal buckets.  With
 * SUB_BITS = 7 a bucket is at most 1/128 (0.8%) of its values wide.
 *
 *   shift = max(0, msb(v) - SUB_BITS)
 *   index = shift * 2^SUB_BITS + (v >> shift)
 *
 * which is continuous: shift 0 covers indices [0, 256), shift 1 covers
 * [256, 384), and so on up to msb 63.
 */
#define SUB_BITS 7
#define SUB_COUNT (1u << SUB_BITS)
#define HIST_BUCKETS ((64 - SUB_BITS) * SUB_COUNT + SUB_COUNT)

struct histogram {
    uint64_t count[HIST_BUCKETS];
    uint64_t total;
    uint64_t max;
};

static inline unsigned hist_shift(uint64_t v)
{
    if (v < (2u * SUB_COUNT))
        return 0;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    return msb - SUB_BITS;
}

static inline void hist_record(struct histogram *h, uint64_t v)
{
    unsigned shift = hist_shift(v);
    h->count[shift * SUB_COUNT + (v >> shift)]++;
    h->total++;
    if (v > h->max)
        h->max = v;
}

/* Highest value that falls into bucket `index` (what the percentile reports). */
static uint64_t hist_bucket_high(unsigned index)
{
    unsigned shift = index < 2 * SUB_COUNT ? 0 : index / SUB_COUNT - 1;
    uint64_t top = index - shift * SUB_COUNT;          /* v >> shift */
    return ((top + 1) << shift) - 1;
}

/* Value at percentile p (0 < p <= 100), capped at the exact maximum. */
static uint64_t hist_percentile(const struct histogram *h, double p)
{
    if (h->total == 0)
        return 0;
    double exact = (p / 100.0) * (double)h->total;
    uint64_t rank = (uint64_t)exact;
    if ((double)rank < exact)        /* ceil: the smallest value covering p% of samples */
        rank++;
    if (rank < 1)
        rank = 1;
    if (rank > h->total)
        rank = h->total;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->count[i];
        if (seen >= rank) {
            uint64_t v = hist_bucket_high(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

/* ------------------------------------------------------------------------ */
/* Byte pattern                                                             */
/* ------------------------------------------------------------------------ */

static uint8_t *pattern;             /* size + 256 pseudo-random bytes */

static void pattern_init(size_t size)
{
    pattern = malloc(size + 256);
    if (!pattern) {
        perror("echo_load: malloc");
        exit(1);
    }
    uint64_t s = 0x2545F4914F6CDD1Dull;          /* fixed seed: runs are reproducible */
    for (size_t i = 0; i < size + 256; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        pattern[i] = (uint8_t)(s >> 32);
    }
}

/* Per-message key: a 64-bit mix (splitmix64 finaliser) of connection and sequence. */
static inline uint64_t msg_key(uint32_t conn_index, uint64_t seq)
{
    uint64_t z = seq * 0x9E3779B97F4A7C15ull + ((uint64_t)conn_index << 40) + conn_index;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/*
 * Fill and check work a 64-bit word at a time (the XOR key repeated in every
 * byte), with a byte loop for the tail: message bytes go through these twice
 * per round trip, so they must not dominate the client's CPU time.
 */
static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Write bytes [from, from + n) of message (conn_index, seq) into dst. */
static void pattern_fill(uint8_t *dst, uint32_t conn_index, uint64_t seq, size_t from, size_t n)
{
    uint64_t h = msg_key(conn_index, seq);
    const uint8_t *src = pattern + (h & 255) + from;
    uint8_t x = (uint8_t)(h >> 8);
    uint64_t x8 = x * 0x0101010101010101ull;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = load64(src + i) ^ x8;
        memcpy(dst + i, &v, sizeof v);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ x;
}

/* Number of bytes in buf that differ from bytes [from, from + n) of the message. */
static size_t pattern_check(const uint8_t *buf, uint32_t conn_index, uint64_t seq, size_t from, size_t n)
{
    uint64_t h = msg_key(conn_index, seq);
    const uint8_t *src = pattern + (h & 255) + from;
    uint8_t x = (uint8_t)(h >> 8);
    uint64_t x8 = x * 0x0101010101010101ull;
    size_t bad = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t d = load64(buf + i) ^ load64(src + i) ^ x8;
        for (; d != 0; d >>= 8)      /* rare: count the differing bytes */
            bad += (d & 0xff) != 0;
    }
    for (; i < n; i++)
        bad += (uint8_t)(buf[i] ^ x) != src[i];
    return bad;
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */
/* ------------------------------------------------------------------------ */

/*
 * Messages on a connection are numbered 0, 1, 2, ...  The sender is at
 * (tx_seq, tx_off): tx_off bytes of message tx_seq have been sent.  The
 * receiver is at (rx_seq, rx_off) likewise.  A message counts as in flight
 * from its first byte sent to its last byte received, so bytes of message
 * `seq` may be sent only while seq < rx_seq + depth.
 */
struct conn {
    int fd;                          /* -1 once closed */
    uint32_t index;
    uint64_t tx_seq;
    size_t tx_off;
    uint64_t rx_seq;
    size_t rx_off;
    bool rx_corrupt;                 /* current rx message already counted as corrupt */
    bool want_out;                   /* EPOLLOUT is part of the registered events */
    uint64_t *sent_ns;               /* [depth]: send time of message seq at seq % depth */
};

static struct {
    int epfd;
    size_t size;
    uint64_t depth;
    uint64_t measure_start;          /* ns, start of the measured window */
    uint64_t measure_end;            /* ns, end of the measured window and of the run */
    uint64_t measured_msgs;
    uint64_t errors;                 /* corrupt messages + failed connections */
    uint64_t corrupt_bytes;
    long open_conns;
    struct histogram hist;
    uint8_t *txbuf;
    uint8_t *rxbuf;
} st;

static void conn_fail(struct conn *c, const char *why, int err)
{
    static unsigned reported;
    if (reported++ < 10)
        fprintf(stderr, "echo_load: connection %u: %s%s%s\n", c->index, why,
                err ? ": " : "", err ? strerror(err) : "");
    st.errors++;
    close(c->fd);                    /* also removes it from the epoll set */
    c->fd = -1;
    st.open_conns--;
}

static void conn_set_out(struct conn *c, bool want)
{
    if (c->want_out == want)
        return;
    struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c };
    if (epoll_ctl(st.epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        perror("echo_load: epoll_ctl");
        exit(1);
    }
    c->want_out = want;
}

/*
 * Send as much as the window and the socket allow.  Bytes are regenerated
 * from the pattern into one scratch buffer, so several messages (and the rest
 * of a partially sent one) go out in a single send() call.
 */
static void conn_send(struct conn *c)
{
    for (;;) {
        uint64_t limit = c->rx_seq + st.depth;
        uint64_t seq = c->tx_seq;
        size_t off = c->tx_off, fill = 0;
        while (seq < limit && fill < IO_CHUNK) {
            size_t n = st.size - off;
            if (n > IO_CHUNK - fill)
                n = IO_CHUNK - fill;
            pattern_fill(st.txbuf + fill, c->index, seq, off, n);
            fill += n;
            off += n;
            if (off == st.size) {
                seq++;
                off = 0;
            }
        }
        if (fill == 0) {             /* window full: wait for echoes */
            conn_set_out(c, false);
            return;
        }

        uint64_t t = now_ns();
        ssize_t w = send(c->fd, st.txbuf, fill, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                conn_set_out(c, true);
                return;
            }
            conn_fail(c, "send", errno);
            return;
        }

        /* Account the accepted bytes; a message's clock starts with its first byte. */
        size_t left = (size_t)w;
        while (left > 0) {
            if (c->tx_off == 0)
                c->sent_ns[c->tx_seq % st.depth] = t;
            size_t n = st.size - c->tx_off;
            if (n > left)
                n = left;
            c->tx_off += n;
            left -= n;
            if (c->tx_off == st.size) {
                c->tx_seq++;
                c->tx_off = 0;
            }
        }
        if ((size_t)w < fill) {      /* socket buffer full: wait for EPOLLOUT */
            conn_set_out(c, true);
            return;
        }
    }
}

/* Check received bytes against the messages they belong to; false if the connection failed. */
static bool conn_consume(struct conn *c, const uint8_t *buf, size_t len, uint64_t t)
{
    while (len > 0) {
        size_t sent = c->rx_seq < c->tx_seq ? st.size : (c->rx_seq == c->tx_seq ? c->tx_off : 0);
        size_t n = sent - c->rx_off;
        if (n == 0) {
            conn_fail(c, "received more bytes than were sent", 0);
            return false;
        }
        if (n > len)
            n = len;
        size_t bad = pattern_check(buf, c->index, c->rx_seq, c->rx_off, n);
        if (bad) {
            st.corrupt_bytes += bad;
            if (!c->rx_corrupt) {
                c->rx_corrupt = true;
                st.errors++;
            }
        }
        buf += n;
        len -= n;
        c->rx_off += n;
        if (c->rx_off == st.size) {  /* message complete */
            if (t >= st.measure_start && t < st.measure_end) {
                hist_record(&st.hist, t - c->sent_ns[c->rx_seq % st.depth]);
                st.measured_msgs++;
            }
            c->rx_seq++;
            c->rx_off = 0;
            c->rx_corrupt = false;
        }
    }
    return true;
}

static void conn_recv(struct conn *c)
{
    for (;;) {
        ssize_t r = recv(c->fd, st.rxbuf, IO_CHUNK, 0);
        if (r > 0) {
            if (!conn_consume(c, st.rxbuf, (size_t)r, now_ns()))
                return;
            if ((size_t)r < IO_CHUNK)   /* drained; level-triggered epoll tells us about more */
                break;
        } else if (r == 0) {
            conn_fail(c, "server closed the connection", 0);
            return;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        } else {
            conn_fail(c, "recv", errno);
            return;
        }
    }
    conn_send(c);                    /* echoes opened the window */
}

/* Blocking-with-timeout connect of one non-blocking socket. */
static int connect_one(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno != EINPROGRESS)
            goto fail;
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        int n;
        do
            n = poll(&p, 1, CONNECT_TIMEOUT_MS);
        while (n < 0 && errno == EINTR);
        if (n == 0)
            errno = ETIMEDOUT;
        if (n <= 0)
            goto fail;
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            goto fail;
        if (err) {
            errno = err;
            goto fail;
        }
    }
    return fd;
fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Main                                                                     */
/* ------------------------------------------------------------------------ */

static void print_result(uint64_t elapsed_ns)
{
    double secs = (double)elapsed_ns / 1e9;
    double rate = secs > 0 ? (double)st.measured_msgs / secs : 0.0;
    double mbps = rate * (double)st.size / 1e6;
    double p50 = hist_percentile(&st.hist, 50.0) / 1e3;
    double p90 = hist_percentile(&st.hist, 90.0) / 1e3;
    double p99 = hist_percentile(&st.hist, 99.0) / 1e3;
    double p999 = hist_percentile(&st.hist, 99.9) / 1e3;
    double max = st.hist.max / 1e3;

    if (opt.json) {
        printf("{\"msgs/s\": %.1f, \"MB/s\": %.3f, \"p50_us\": %.1f, \"p90_us\": %.1f, "
               "\"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f, \"errors\": %llu, "
               "\"msgs\": %llu, \"connections\": %ld, \"size\": %ld, \"depth\": %ld, "
               "\"duration_s\": %.3f}\n",
               rate, mbps, p50, p90, p99, p999, max, (unsigned long long)st.errors,
               (unsigned long long)st.measured_msgs, opt.connections, opt.size, opt.depth, secs);
    } else {
        printf("msgs/s=%.1f MB/s=%.3f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f "
               "max_us=%.1f errors=%llu\n",
               rate, mbps, p50, p90, p99, p999, max, (unsigned long long)st.errors);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile(opt.connections);

    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
    int gai = getaddrinfo(opt.host, opt.port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "echo_load: %s:%s: %s\n", opt.host, opt.port, gai_strerror(gai));
        return 1;
    }

    st.size = (size_t)opt.size;
    st.depth = (uint64_t)opt.depth;
    pattern_init(st.size);
    st.txbuf = malloc(IO_CHUNK);
    st.rxbuf = malloc(IO_CHUNK);
    struct conn *conns = calloc((size_t)opt.connections, sizeof *conns);
    uint64_t *sent_ns = calloc((size_t)opt.connections * st.depth, sizeof *sent_ns);
    if (!st.txbuf || !st.rxbuf || !conns || !sent_ns) {
        perror("echo_load: malloc");
        return 1;
    }
    st.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (st.epfd < 0) {
        perror("echo_load: epoll_create1");
        return 1;
    }

    /* Connect everything before the clock starts. */
    for (long i = 0; i < opt.connections; i++) {
        struct conn *c = &conns[i];
        c->index = (uint32_t)i;
        c->sent_ns = sent_ns + (size_t)i * st.depth;
        c->fd = connect_one(ai);
        if (c->fd < 0) {
            fprintf(stderr, "echo_load: connect %s:%s (connection %ld): %s\n",
                    opt.host, opt.port, i, strerror(errno));
            return 1;
        }
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(st.epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
            perror("echo_load: epoll_ctl");
            return 1;
        }
        st.open_conns++;
    }
    freeaddrinfo(ai);

    uint64_t t0 = now_ns();
    st.measure_start = t0 + (uint64_t)(opt.warmup * 1e9);
    st.measure_end = st.measure_start + (uint64_t)(opt.duration * 1e9);

    for (long i = 0; i < opt.connections; i++)
        conn_send(&conns[i]);

    enum { MAX_EVENTS = 512 };
    struct epoll_event events[MAX_EVENTS];
    uint64_t t = now_ns();
    while (t < st.measure_end && st.open_conns > 0) {
        /* Round the timeout up so we never spin on a sub-millisecond remainder. */
        int timeout_ms = (int)((st.measure_end - t + 999999) / 1000000);
        int n = epoll_wait(st.epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("echo_load: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->fd < 0)           /* closed earlier in this batch */
                continue;
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                conn_recv(c);        /* recv() reports the error, if any */
            if (c->fd >= 0 && (events[i].events & EPOLLOUT))
                conn_send(c);
        }
        t = now_ns();
    }

    /* If every connection died early, report over the time actually measured. */
    uint64_t end = t < st.measure_end ? t : st.measure_end;
    print_result(end > st.measure_start ? end - st.measure_start : 0);
    if (st.corrupt_bytes)
        fprintf(stderr, "echo_load: %llu corrupted bytes received\n",
                (unsigned long long)st.corrupt_bytes);

    for (long i = 0; i < opt.connections; i++)
        if (conns[i].fd >= 0)
            close(conns[i].fd);
    close(st.epfd);
    free(conns);
    free(sent_ns);
    free(st.txbuf);
    free(st.rxbuf);
    free(pattern);
    return st.errors ? 2 : 0;
}
