/*
 * client_util.h - what the C benchmark clients (echo_load.c, idle_conns.c) share: option
 * parsing with range checks, the monotonic clock, and raising RLIMIT_NOFILE.
 *
 * Each client defines PROGRAM (its name, for messages) before including this header.
 * Every function is static: each program gets its own copy, and nothing is linked separately.
 */
#ifndef CLIENT_UTIL_H
#define CLIENT_UTIL_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#ifndef PROGRAM
#error "define PROGRAM (the program's name) before including client_util.h"
#endif

/* The integer value of option --name, or exit(1) with a message when it is not in [lo, hi]. */
static long parse_long(const char *name, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, PROGRAM ": --%s must be an integer in [%ld, %ld], got '%s'\n",
                name, lo, hi, s);
        exit(1);
    }
    return v;
}

/* The seconds of option --name, or exit(1) with a message when not in [lo, 86400]. */
static double parse_seconds(const char *name, const char *s, double lo)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *s == '\0' || *end != '\0' || !(v >= lo) || v > 86400.0) {
        fprintf(stderr, PROGRAM ": --%s must be a number of seconds in [%g, 86400], got '%s'\n",
                name, lo, s);
        exit(1);
    }
    return v;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Raises RLIMIT_NOFILE to its hard limit; exit(1) when `connections` (+ 16 spare) do not fit. */
static void raise_nofile(long connections)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            perror(PROGRAM ": setrlimit(RLIMIT_NOFILE)");
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)connections + 16) {
        fprintf(stderr, PROGRAM ": %ld connections need more file descriptors than "
                "RLIMIT_NOFILE allows (%llu; raise it with ulimit -Hn / -n)\n", connections,
                (unsigned long long)rl.rlim_cur);
        exit(1);
    }
}

#endif /* CLIENT_UTIL_H */
