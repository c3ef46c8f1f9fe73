#!/usr/bin/env bash
# compare-http.sh - interleaved comparison of HTTP/1.1 servers under wrk.
#
# usage: compare-http.sh [options] -- name1=command1 name2=command2 ...
#
#   --rounds R         rounds; each round runs every server once, in the order given (default 3)
#   --duration S       measured seconds per run, whole seconds (default 10)
#   --connections C    wrk connections (default 64)
#   --threads T        wrk threads (default 1)
#   --warmup S         seconds of separate warm-up run before each measured run, whole seconds;
#                      0 skips it (default 1)
#   --path P           request path (default /plaintext)
#   --host H           address the servers listen on and the client connects to (default 127.0.0.1)
#   --client-cpu C     CPU list the client is pinned to with taskset, or "none" (default 1)
#   --port-base P      first port to use; every run gets a fresh one (default: random 20000-39999)
#   --out DIR          keep server logs, wrk outputs and results.tsv in DIR (default: a temporary
#                      directory, removed at the end unless something failed)
#
# Each command starts a server that listens on the port substituted for {PORT}, e.g.
#
#   compare-http.sh --rounds 3 -- \
#       nio='.build/release/ringport nio-http --transport posix --port {PORT}' \
#       ringport='.build/release/ringport http --port {PORT} --log-level error'
#
# The command is parsed by the shell (eval) and run with `exec`, so quoting works; it must
# *become* the server process - a plain command, possibly behind env/taskset/nice, not a
# pipeline or a wrapper that forks the server - because the server's CPU time is read from
# /proc/PID/stat of that PID (utime + stime of all its threads).
#
# Per run: start the server, wait until the port accepts connections, run a warm-up wrk of
# --warmup seconds, sample the server's CPU time, run the measured `wrk --latency` (client
# pinned with taskset, server not pinned unless its command pins it), sample the CPU time
# again, then stop the server with SIGTERM (SIGKILL after 5 s).  The CPU window thus also
# covers the measured run's connection set-up and tear-down, identically for every server.
# Errors are wrk's socket errors (connect, read, write, timeout) plus its non-2xx/3xx
# responses.  At the end, per server: medians over rounds of requests/s, latency p50/p90/p99
# and server CPU microseconds per request, and the medians of the per-round ratios to the
# FIRST server.
#
# Exit status: 0 if every run worked with errors=0, 1 otherwise.
# Needs: bash, coreutils (timeout, taskset from util-linux), awk, and wrk (Debian:
# apt-get install -y wrk; WRK=path overrides).
set -euo pipefail

wrk=${WRK:-wrk}

prog=compare-http
# shellcheck source=compare-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/compare-lib.sh"

# ---------------------------------------------------------------------------------------
# Options

threads=1 path=/plaintext
own_option() {
    case $1 in
        --threads)     threads=${2:?} ;;
        --path)        path=${2:?} ;;
        *)             return 1 ;;
    esac
}
parse_options "$@"

is_int "$rounds" || die "--rounds must be a positive integer"
is_int "$duration" || die "--duration must be a positive whole number of seconds (wrk takes no fractions)"
is_int "$connections" || die "--connections must be a positive integer"
is_int "$threads" || die "--threads must be a positive integer"
((connections >= threads)) || die "--connections must be at least --threads (wrk needs a connection per thread)"
[[ $warmup =~ ^[0-9]+$ ]] || die "--warmup must be a whole number of seconds"
[[ $path == /* ]] || die "--path must start with /"
is_int "$port" && ((port < 65536)) || die "--port-base must be a port number"
((${#specs[@]} > 0)) || { usage >&2; exit 1; }
command -v "$wrk" >/dev/null 2>&1 ||
    die "wrk not found: install it (Debian: apt-get install -y wrk) or set WRK=/path/to/wrk"

parse_servers "${specs[@]}"
prepare_runs
printf 'round\tserver\treqs_per_s\tp50_us\tp90_us\tp99_us\tcpu_us_per_req\terrors\n' >"$results"

# ---------------------------------------------------------------------------------------
# Runs

# Reads wrk --latency output; prints "reqs/s requests p50_us p90_us p99_us errors" on one line,
# or nothing if the output has no Requests/sec line.  Errors = socket errors (connect + read +
# write + timeout) + non-2xx/3xx responses.
parse_wrk() {
    awk '
    function us(t,   v) {                # wrk latency ("812.00us", "1.08ms", "2.00s", "1.00m") in us
        v = t + 0
        if (t ~ /us$/) return v
        if (t ~ /ms$/) return v * 1e3
        if (t ~ /m$/)  return v * 6e7
        if (t ~ /s$/)  return v * 1e6
        return "NA"
    }
    /^ +50% /              { p50 = us($2) }
    /^ +90% /              { p90 = us($2) }
    /^ +99% /              { p99 = us($2) }
    / requests in /        { requests = $1 }
    /^ *Socket errors:/    { gsub(/,/, ""); errors += $4 + $6 + $8 + $10 }
    /^ *Non-2xx or 3xx responses:/ { errors += $NF }
    /^Requests\/sec:/      { rps = $2 }
    END {
        if (rps == "") exit
        printf "%s %s %s %s %s %d\n", rps, (requests == "" ? "NA" : requests), \
            (p50 == "" ? "NA" : p50), (p90 == "" ? "NA" : p90), (p99 == "" ? "NA" : p99), errors
    }' <<<"$1"
}

# run_server NAME LOG: the warm-up wrk and the measured `wrk --latency` against the server just
# started; wrk's output goes to $work/NAME.roundR.wrk.txt.
run_server() {
    local name=$1 log=$2 rc cpu0 cpu1 parsed rps requests p50 p90 p99 errors cpu_per_req
    local wrk_out="$work/$name.round$round.wrk.txt" url="http://$host:$port$path"
    local common=(-t "$threads" -c "$connections")
    if ((warmup > 0)); then
        rc=0
        "${pin[@]}" timeout -k 5 "$(client_limit "$warmup")" "$wrk" "${common[@]}" \
            -d "${warmup}s" "$url" >/dev/null 2>>"$log" || rc=$?
        ((rc == 0)) || echo "$prog: warm-up against $name exited with $rc" >&2
    fi

    cpu0=$(cpu_ticks "$server_pid")
    rc=0
    "${pin[@]}" timeout -k 5 "$(client_limit "$duration")" "$wrk" "${common[@]}" --latency \
        -d "${duration}s" "$url" >"$wrk_out" 2>&1 || rc=$?
    cpu1=$(cpu_ticks "$server_pid" || echo "")
    stop_server

    parsed=$(parse_wrk "$(cat "$wrk_out")")
    if [[ -z $parsed || -z $cpu1 ]] || ((rc != 0)); then
        echo "round $round/$rounds  $name: FAILED (wrk exit $rc; see $wrk_out and $log)" >&2
        sed 's/^/    /' "$wrk_out" >&2
        printf '%s\t%s\tNA\tNA\tNA\tNA\tNA\tNA\n' "$round" "$name" >>"$results"
        failed=1 keep_work=1
        return 0
    fi
    read -r rps requests p50 p90 p99 errors <<<"$parsed"
    cpu_per_req=$(cpu_us_per "$cpu0" "$cpu1" "$requests")
    if ((errors != 0)); then failed=1 keep_work=1; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$rps" "$p50" "$p90" "$p99" \
        "$cpu_per_req" "$errors" >>"$results"
    printf 'round %d/%d  %-12s req/s=%-12s p50_us=%-9s p90_us=%-9s p99_us=%-9s cpu_us/req=%-8s errors=%s\n' \
        "$round" "$rounds" "$name" "$rps" "$p50" "$p90" "$p99" "$cpu_per_req" "$errors"
}

echo "$prog: ${#names[@]} servers x $rounds rounds; $duration s measured after a $warmup s" \
     "warm-up; GET $path connections=$connections wrk-threads=$threads client-cpu=$client_cpu"
echo "$prog: logs in $work"
run_rounds

# ---------------------------------------------------------------------------------------
# Summary: medians per server, and medians of per-round ratios to the first server.

summarize 3 7 '3|req/s|12|%.0f' '4|p50_us|9|%.1f' '5|p90_us|9|%.1f' '6|p99_us|9|%.1f' \
    '7|cpu_us/req|10|%.3f' 'rate_ratio|req/s ratio|13|%.3f' 'cpu_ratio|cpu/req ratio|13|%.3f'
exit "$failed"
