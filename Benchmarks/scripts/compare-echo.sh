#!/usr/bin/env bash
# compare-echo.sh - interleaved comparison of TCP echo servers under echo_load.
#
# usage: compare-echo.sh [options] -- name1=command1 name2=command2 ...
#
#   --rounds R         rounds; each round runs every server once, in the order given (default 3)
#   --duration S       measured seconds per run (default 10)
#   --connections N    echo_load connections (default 64)
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
# Needs: bash, coreutils (timeout, taskset from util-linux), awk, and Benchmarks/bin/echo_load
# (Benchmarks/scripts/build-c.sh builds it; ECHO_LOAD=path overrides).
set -euo pipefail

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
load=${ECHO_LOAD:-$bench_dir/bin/echo_load}

usage() { sed -n '2,/^set -e/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "compare-echo: $*" >&2; exit 1; }

rounds=3 duration=10 connections=64 size=128 depth=1 warmup=1
host=127.0.0.1 client_cpu=1 port=$((20000 + RANDOM % 20000)) out_dir=""
while (($# > 0)); do
    case $1 in
        --rounds)      rounds=${2:?}; shift 2 ;;
        --duration)    duration=${2:?}; shift 2 ;;
        --connections) connections=${2:?}; shift 2 ;;
        --size)        size=${2:?}; shift 2 ;;
        --depth)       depth=${2:?}; shift 2 ;;
        --warmup)      warmup=${2:?}; shift 2 ;;
        --host)        host=${2:?}; shift 2 ;;
        --client-cpu)  client_cpu=${2:?}; shift 2 ;;
        --port-base)   port=${2:?}; shift 2 ;;
        --out)         out_dir=${2:?}; shift 2 ;;
        -h|--help)     usage; exit 0 ;;
        --)            shift; break ;;
        *)             usage >&2; exit 1 ;;
    esac
done

is_int() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
is_secs() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
is_int "$rounds" || die "--rounds must be a positive integer"
is_int "$connections" || die "--connections must be a positive integer"
is_int "$size" || die "--size must be a positive integer"
is_int "$depth" || die "--depth must be a positive integer"
is_int "$port" && ((port < 65536)) || die "--port-base must be a port number"
is_secs "$duration" && [[ ! $duration =~ ^0+(\.0+)?$ ]] || die "--duration must be a positive number"
is_secs "$warmup" || die "--warmup must be a number of seconds"
(($# > 0)) || { usage >&2; exit 1; }
[[ -x $load ]] || die "$load not found: run Benchmarks/scripts/build-c.sh first"

names=() cmds=()
for spec in "$@"; do
    [[ $spec == *=* && -n ${spec%%=*} ]] || die "expected name=command, got '$spec'"
    name=${spec%%=*} cmd=${spec#*=}
    [[ $name =~ ^[A-Za-z0-9_.+-]+$ ]] || die "server name '$name': use letters, digits, _ . + -"
    [[ $cmd == *'{PORT}'* ]] || die "command for '$name' has no {PORT} placeholder"
    [[ " ${names[*]} " != *" $name "* ]] || die "server name '$name' is used twice"
    names+=("$name") cmds+=("$cmd")
done

pin=()
[[ $client_cpu == none ]] || pin=(taskset -c "$client_cpu")
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)
# echo_load stops by itself; timeout only guards against a wedged client (connect stalls etc.).
load_limit() { awk -v d="$1" -v n="$connections" 'BEGIN { print d + 30 + n / 100 }'; }

keep_work=0
if [[ -n $out_dir ]]; then
    mkdir -p "$out_dir"
    work=$out_dir keep_work=1
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/compare-echo.XXXXXX")
fi
results=$work/results.tsv
printf 'round\tserver\tmsgs_per_s\tp99_us\tcpu_us_per_msg\terrors\n' >"$results"

# ---------------------------------------------------------------------------------------
# Server process handling

server_pid=""

# True while PID exists and is not a zombie (an exited child we have not reaped yet).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# utime + stime of PID in clock ticks (fields 14 and 15 of /proc/PID/stat, summed over threads).
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat") || return 1
    stat=${stat##*) }                # drop "pid (comm) ": comm may contain spaces
    # shellcheck disable=SC2086
    set -- $stat                     # $1 is field 3 (state), so field N is $((N - 2))
    echo $(( ${12} + ${13} ))
}

stop_server() {
    [[ -n $server_pid ]] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        alive "$server_pid" || break
        sleep 0.1
    done
    if alive "$server_pid"; then
        echo "compare-echo: server $server_pid ignored SIGTERM for 5 s: SIGKILL" >&2
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

cleanup() {
    stop_server
    if ((keep_work == 0)); then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$host/$1" 2>/dev/null; }

# Next port nobody is listening on.
next_port() {
    local tries=0
    while :; do
        port=$((port + 1))
        ((port < 65536)) || port=20000
        port_open "$port" || return 0
        ((++tries < 100)) || die "no free port found"
    done
}

# start_server NAME CMD LOG: sets server_pid, returns once the port accepts connections.
start_server() {
    local name=$1 cmd=${2//\{PORT\}/$port} log=$3 i
    # The subshell execs the command, so $! is the server's own PID.
    (eval "exec $cmd") </dev/null >"$log" 2>&1 &
    server_pid=$!
    for ((i = 0; i < 100; i++)); do
        if ! alive "$server_pid"; then
            echo "compare-echo: $name exited before listening on $host:$port: $cmd" >&2
            break
        fi
        if port_open "$port"; then return 0; fi
        sleep 0.1
    done
    ((i < 100)) || echo "compare-echo: $name not listening on $host:$port after 10 s: $cmd" >&2
    sed 's/^/    /' "$log" >&2
    keep_work=1
    exit 1
}

# Value of a numeric field in echo_load's one-line JSON output.
json_field() {
    awk -v key="\"$2\":" '{
        i = index($0, key); if (!i) exit
        s = substr($0, i + length(key)); sub(/^ */, "", s); sub(/[,}].*$/, "", s); print s
    }' <<<"$1"
}

# ---------------------------------------------------------------------------------------
# Runs

failed=0
echo "compare-echo: ${#names[@]} servers x $rounds rounds; $duration s measured after a $warmup s" \
     "warm-up; connections=$connections size=$size depth=$depth client-cpu=$client_cpu"
echo "compare-echo: logs in $work"

for ((round = 1; round <= rounds; round++)); do
    for i in "${!names[@]}"; do
        name=${names[$i]}
        next_port
        log="$work/$name.round$round.log"
        start_server "$name" "${cmds[$i]}" "$log"

        common=(--host "$host" --port "$port" --connections "$connections" --size "$size"
                --depth "$depth" --warmup 0)
        if [[ ! $warmup =~ ^0+(\.0+)?$ ]]; then
            rc=0
            "${pin[@]}" timeout -k 5 "$(load_limit "$warmup")" "$load" "${common[@]}" \
                --duration "$warmup" >/dev/null 2>>"$log" || rc=$?
            ((rc == 0)) || echo "compare-echo: warm-up against $name exited with $rc" >&2
        fi

        cpu0=$(cpu_ticks "$server_pid")
        rc=0
        out=$("${pin[@]}" timeout -k 5 "$(load_limit "$duration")" "$load" "${common[@]}" \
              --duration "$duration" --json 2>>"$log") || rc=$?
        cpu1=$(cpu_ticks "$server_pid" || echo "")
        stop_server

        msgs_s=$(json_field "$out" "msgs/s") p99=$(json_field "$out" p99_us)
        msgs=$(json_field "$out" msgs) errors=$(json_field "$out" errors)
        if [[ -z $msgs || -z $cpu1 ]] || ((rc != 0 && rc != 2)); then
            echo "round $round/$rounds  $name: FAILED (echo_load exit $rc; see $log)" >&2
            printf '%s\t%s\tNA\tNA\tNA\tNA\n' "$round" "$name" >>"$results"
            failed=1 keep_work=1
            continue
        fi
        cpu_per_msg=$(awk -v t=$((cpu1 - cpu0)) -v hz="$clk_tck" -v m="$msgs" \
                      'BEGIN { if (m > 0) printf "%.3f", t * 1e6 / hz / m; else print "NA" }')
        ((errors == 0)) || failed=1
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$msgs_s" "$p99" "$cpu_per_msg" \
            "$errors" >>"$results"
        printf 'round %d/%d  %-12s msgs/s=%-12s p99_us=%-10s cpu_us/msg=%-8s errors=%s\n' \
            "$round" "$rounds" "$name" "$msgs_s" "$p99" "$cpu_per_msg" "$errors"
    done
done

# ---------------------------------------------------------------------------------------
# Summary: medians per server, and medians of per-round ratios to the first server.

echo
awk -F'\t' -v first="${names[0]}" -v order="${names[*]}" '
function median(a, n,   i, j, t) {          # sorts a[1..n] in place
    for (i = 2; i <= n; i++) {
        t = a[i]
        for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
        a[j + 1] = t
    }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function med(key, s,   n, i, a) {           # median of column key for server s
    n = cnt[key, s]
    if (n == 0) return "NA"
    for (i = 1; i <= n; i++) a[i] = val[key, s, i]
    return median(a, n)
}
function ok(v) { return v != "" && v != "NA" }
function add(key, s, v) { if (ok(v)) val[key, s, ++cnt[key, s]] = v }
NR == 1 { next }
{
    r = $1; s = $2
    rate[r, s] = $3; cpu[r, s] = $5
    add("rate", s, $3); add("p99", s, $4); add("cpu", s, $5)
    if (ok($3)) runs[s]++
    rounds[r] = 1
}
END {
    ns = split(order, srv, " ")
    for (k = 1; k <= ns; k++) {
        s = srv[k]
        for (r in rounds) {
            if (ok(rate[r, s]) && ok(rate[r, first]) && rate[r, first] + 0 > 0)
                add("rate_ratio", s, rate[r, s] / rate[r, first])
            if (ok(cpu[r, s]) && ok(cpu[r, first]) && cpu[r, first] + 0 > 0)
                add("cpu_ratio", s, cpu[r, s] / cpu[r, first])
        }
    }
    w = 6
    for (k = 1; k <= ns; k++) if (length(srv[k]) > w) w = length(srv[k])
    printf "%-" w "s  %4s  %12s  %10s  %10s  %14s  %14s\n", "server", "runs", "msgs/s", \
        "p99_us", "cpu_us/msg", "msgs/s ratio", "cpu/msg ratio"
    for (k = 1; k <= ns; k++) {
        s = srv[k]
        m = med("rate", s); p = med("p99", s); c = med("cpu", s)
        rr = med("rate_ratio", s); cr = med("cpu_ratio", s)
        printf "%-" w "s  %4d  %12s  %10s  %10s  %14s  %14s\n", s, runs[s] + 0, \
            (m == "NA" ? m : sprintf("%.0f", m)), (p == "NA" ? p : sprintf("%.1f", p)), \
            (c == "NA" ? c : sprintf("%.3f", c)), (rr == "NA" ? rr : sprintf("%.3f", rr)), \
            (cr == "NA" ? cr : sprintf("%.3f", cr))
    }
    printf "(medians over rounds; ratios are medians of per-round ratios to %s)\n", first
}' "$results"

if ((keep_work)); then echo "compare-echo: results and logs kept in $work"; fi
exit "$failed"
