#!/usr/bin/env bash
# compare-echo.sh - interleaved comparison of TCP echo servers under one echo load client.
#
# usage: compare-echo.sh [options] -- name1=command1 name2=command2 ...
#
#   --rounds R         rounds; each round runs every server once, in the order given (default 3)
#   --duration S       measured seconds per run (default 10)
#   --connections N    load connections (default 64)
#   --size B           message size in bytes (default 128)
#   --depth D          messages in flight per connection (default 1)
#   --warmup S         seconds of separate warm-up run before each measured run (default 1)
#   --host H           address the servers listen on and the client connects to (default 127.0.0.1)
#   --client-cpu C     CPU list the client is pinned to with taskset, or "none" (default 1)
#   --port-base P      first port to use; every run gets a fresh one (default: random 20000-39999)
#   --out DIR          keep server logs and results.tsv in DIR (default: a temporary directory,
#                      removed at the end unless something failed)
#
# Each command starts a server that listens on the port substituted for {PORT}, e.g.
#
#   compare-echo.sh --rounds 3 -- \
#       epoll='Benchmarks/bin/echo_epoll --port {PORT}' \
#       uring='Benchmarks/bin/echo_uring --port {PORT}'
#
# The command is parsed by the shell (eval) and run with `exec`, so quoting works; it must
# *become* the server process - a plain command, possibly behind env/taskset/nice, not a
# pipeline or a wrapper that forks the server - because the server's CPU time is read from
# /proc/PID/stat of that PID (utime + stime of all its threads).
#
# Per run: start the server, wait until the port accepts connections, run a warm-up of
# --warmup seconds, sample the server's CPU time, run the measured echo_load (warm-up 0,
# client pinned with taskset, server not pinned unless its command pins it), sample the CPU
# time again, then stop the server with SIGTERM (SIGKILL after 5 s).  The CPU window thus
# also covers the measured run's connection set-up and tear-down, identically for every
# server.  At the end, per server: medians over rounds of msgs/s, p99 and server CPU
# microseconds per message, and the medians of the per-round ratios to the FIRST server.
#
# Exit status: 0 if every run worked with errors=0, 1 otherwise.
# Needs: bash, coreutils (timeout, taskset from util-linux), awk, and a load client that takes
# echo_load's options and prints its JSON: Benchmarks/bin/echo_load (build-c.sh builds it) by
# default, or ECHO_LOAD='.build/release/ringport load' (bench-echo.sh uses that).
set -euo pipefail

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The load client: a command and its first arguments, split on spaces.
read -r -a load <<<"${ECHO_LOAD:-$bench_dir/bin/echo_load}"

prog=compare-echo
# shellcheck source=compare-lib.sh
source "$bench_dir/scripts/compare-lib.sh"

# ---------------------------------------------------------------------------------------
# Options

size=128 depth=1
own_option() {
    case $1 in
        --size)        size=${2:?} ;;
        --depth)       depth=${2:?} ;;
        *)             return 1 ;;
    esac
}
parse_options "$@"

is_secs() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
is_int "$rounds" || die "--rounds must be a positive integer"
is_int "$connections" || die "--connections must be a positive integer"
is_int "$size" || die "--size must be a positive integer"
is_int "$depth" || die "--depth must be a positive integer"
is_int "$port" && ((port < 65536)) || die "--port-base must be a port number"
is_secs "$duration" && [[ ! $duration =~ ^0+(\.0+)?$ ]] || die "--duration must be a positive number"
is_secs "$warmup" || die "--warmup must be a number of seconds"
((${#specs[@]} > 0)) || { usage >&2; exit 1; }
[[ -x ${load[0]} ]] || die "${load[0]} not found: run Benchmarks/scripts/build-c.sh first (or set ECHO_LOAD)"

parse_servers "${specs[@]}"
prepare_runs
printf 'round\tserver\tmsgs_per_s\tp99_us\tcpu_us_per_msg\terrors\n' >"$results"

# ---------------------------------------------------------------------------------------
# Runs

# Value of a numeric field in the load client's one-line JSON output.
json_field() {
    awk -v key="\"$2\":" '{
        i = index($0, key); if (!i) exit
        s = substr($0, i + length(key)); sub(/^ */, "", s); sub(/[,}].*$/, "", s); print s
    }' <<<"$1"
}

# run_server NAME LOG: the warm-up and the measured load against the server just started.
run_server() {
    local name=$1 log=$2 rc out cpu0 cpu1 msgs_s p99 msgs errors cpu_per_msg
    local common=(--host "$host" --port "$port" --connections "$connections" --size "$size"
                  --depth "$depth" --warmup 0)
    if [[ ! $warmup =~ ^0+(\.0+)?$ ]]; then
        rc=0
        "${pin[@]}" timeout -k 5 "$(client_limit "$warmup")" "${load[@]}" "${common[@]}" \
            --duration "$warmup" >/dev/null 2>>"$log" || rc=$?
        ((rc == 0)) || echo "$prog: warm-up against $name exited with $rc" >&2
    fi

    cpu0=$(cpu_ticks "$server_pid")
    rc=0
    out=$("${pin[@]}" timeout -k 5 "$(client_limit "$duration")" "${load[@]}" "${common[@]}" \
          --duration "$duration" --json 2>>"$log") || rc=$?
    cpu1=$(cpu_ticks "$server_pid" || echo "")
    stop_server

    msgs_s=$(json_field "$out" "msgs/s") p99=$(json_field "$out" p99_us)
    msgs=$(json_field "$out" msgs) errors=$(json_field "$out" errors)
    if [[ -z $msgs || -z $cpu1 ]] || ((rc != 0 && rc != 2)); then
        echo "round $round/$rounds  $name: FAILED (load client exit $rc; see $log)" >&2
        printf '%s\t%s\tNA\tNA\tNA\tNA\n' "$round" "$name" >>"$results"
        failed=1 keep_work=1
        return 0
    fi
    if ((errors != 0)); then
        # Messages that were not echoed intact are counted by the client, and a server that
        # dropped connections serves fewer, busier ones: such a run's figures are not comparable.
        echo "round $round/$rounds  $name: $errors errors; its figures are left out (see $log)" >&2
        printf '%s\t%s\tNA\tNA\tNA\t%s\n' "$round" "$name" "$errors" >>"$results"
        failed=1 keep_work=1
        return 0
    fi
    cpu_per_msg=$(cpu_us_per "$cpu0" "$cpu1" "$msgs")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$msgs_s" "$p99" "$cpu_per_msg" \
        "$errors" >>"$results"
    printf 'round %d/%d  %-12s msgs/s=%-12s p99_us=%-10s cpu_us/msg=%-8s errors=%s\n' \
        "$round" "$rounds" "$name" "$msgs_s" "$p99" "$cpu_per_msg" "$errors"
}

echo "$prog: ${#names[@]} servers x $rounds rounds; $duration s measured after a $warmup s" \
     "warm-up; connections=$connections size=$size depth=$depth client-cpu=$client_cpu"
echo "$prog: logs in $work"
run_rounds

# ---------------------------------------------------------------------------------------
# Summary: medians per server, and medians of per-round ratios to the first server.

summarize 3 5 '3|msgs/s|12|%.0f' '4|p99_us|10|%.1f' '5|cpu_us/msg|10|%.3f' \
    'rate_ratio|msgs/s ratio|14|%.3f' 'cpu_ratio|cpu/msg ratio|14|%.3f'
exit "$failed"
