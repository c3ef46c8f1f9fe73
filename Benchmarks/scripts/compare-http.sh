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
#       nio='Benchmarks/.build/release/nio-http --port {PORT}' \
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

usage() { sed -n '2,/^set -e/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "compare-http: $*" >&2; exit 1; }

rounds=3 duration=10 connections=64 threads=1 warmup=1 path=/plaintext
host=127.0.0.1 client_cpu=1 port=$((20000 + RANDOM % 20000)) out_dir=""
while (($# > 0)); do
    case $1 in
        --rounds)      rounds=${2:?}; shift 2 ;;
        --duration)    duration=${2:?}; shift 2 ;;
        --connections) connections=${2:?}; shift 2 ;;
        --threads)     threads=${2:?}; shift 2 ;;
        --warmup)      warmup=${2:?}; shift 2 ;;
        --path)        path=${2:?}; shift 2 ;;
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
is_int "$rounds" || die "--rounds must be a positive integer"
is_int "$duration" || die "--duration must be a positive whole number of seconds (wrk takes no fractions)"
is_int "$connections" || die "--connections must be a positive integer"
is_int "$threads" || die "--threads must be a positive integer"
((connections >= threads)) || die "--connections must be at least --threads (wrk needs a connection per thread)"
[[ $warmup =~ ^[0-9]+$ ]] || die "--warmup must be a whole number of seconds"
[[ $path == /* ]] || die "--path must start with /"
is_int "$port" && ((port < 65536)) || die "--port-base must be a port number"
(($# > 0)) || { usage >&2; exit 1; }
command -v "$wrk" >/dev/null 2>&1 ||
    die "wrk not found: install it (Debian: apt-get install -y wrk) or set WRK=/path/to/wrk"

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
# wrk stops by itself; timeout only guards against a wedged client.
wrk_limit() { awk -v d="$1" -v n="$connections" 'BEGIN { print d + 30 + n / 100 }'; }

keep_work=0
if [[ -n $out_dir ]]; then
    mkdir -p "$out_dir"
    work=$out_dir keep_work=1
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/compare-http.XXXXXX")
fi
results=$work/results.tsv
printf 'round\tserver\treqs_per_s\tp50_us\tp90_us\tp99_us\tcpu_us_per_req\terrors\n' >"$results"

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
        echo "compare-http: server $server_pid ignored SIGTERM for 5 s: SIGKILL" >&2
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
            echo "compare-http: $name exited before listening on $host:$port: $cmd" >&2
            break
        fi
        if port_open "$port"; then return 0; fi
        sleep 0.1
    done
    ((i < 100)) || echo "compare-http: $name not listening on $host:$port after 10 s: $cmd" >&2
    sed 's/^/    /' "$log" >&2
    keep_work=1
    exit 1
}

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

# ---------------------------------------------------------------------------------------
# Runs

failed=0
echo "compare-http: ${#names[@]} servers x $rounds rounds; $duration s measured after a $warmup s" \
     "warm-up; GET $path connections=$connections wrk-threads=$threads client-cpu=$client_cpu"
echo "compare-http: logs in $work"

for ((round = 1; round <= rounds; round++)); do
    for i in "${!names[@]}"; do
        name=${names[$i]}
        next_port
        log="$work/$name.round$round.log"
        wrk_out="$work/$name.round$round.wrk.txt"
        start_server "$name" "${cmds[$i]}" "$log"

        url="http://$host:$port$path"
        common=(-t "$threads" -c "$connections")
        if ((warmup > 0)); then
            rc=0
            "${pin[@]}" timeout -k 5 "$(wrk_limit "$warmup")" "$wrk" "${common[@]}" \
                -d "${warmup}s" "$url" >/dev/null 2>>"$log" || rc=$?
            ((rc == 0)) || echo "compare-http: warm-up against $name exited with $rc" >&2
        fi

        cpu0=$(cpu_ticks "$server_pid")
        rc=0
        "${pin[@]}" timeout -k 5 "$(wrk_limit "$duration")" "$wrk" "${common[@]}" --latency \
            -d "${duration}s" "$url" >"$wrk_out" 2>&1 || rc=$?
        cpu1=$(cpu_ticks "$server_pid" || echo "")
        stop_server

        parsed=$(parse_wrk "$(cat "$wrk_out")")
        if [[ -z $parsed || -z $cpu1 ]] || ((rc != 0)); then
            echo "round $round/$rounds  $name: FAILED (wrk exit $rc; see $wrk_out and $log)" >&2
            sed 's/^/    /' "$wrk_out" >&2
            printf '%s\t%s\tNA\tNA\tNA\tNA\tNA\tNA\n' "$round" "$name" >>"$results"
            failed=1 keep_work=1
            continue
        fi
        read -r rps requests p50 p90 p99 errors <<<"$parsed"
        cpu_per_req=$(awk -v t=$((cpu1 - cpu0)) -v hz="$clk_tck" -v r="$requests" \
                      'BEGIN { if (r > 0) printf "%.3f", t * 1e6 / hz / r; else print "NA" }')
        if ((errors != 0)); then failed=1 keep_work=1; fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$rps" "$p50" "$p90" "$p99" \
            "$cpu_per_req" "$errors" >>"$results"
        printf 'round %d/%d  %-12s req/s=%-12s p50_us=%-9s p90_us=%-9s p99_us=%-9s cpu_us/req=%-8s errors=%s\n' \
            "$round" "$rounds" "$name" "$rps" "$p50" "$p90" "$p99" "$cpu_per_req" "$errors"
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
function add(key, s, v) { if (ok(v)) val[key, s, ++cnt[key, s]] = v + 0 }
function fmt(v, f) { return v == "NA" ? v : sprintf(f, v) }
NR == 1 { next }
{
    r = $1; s = $2
    rate[r, s] = $3; cpu[r, s] = $7
    add("rate", s, $3); add("p50", s, $4); add("p90", s, $5); add("p99", s, $6); add("cpu", s, $7)
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
    printf "%-" w "s  %4s  %12s  %9s  %9s  %9s  %10s  %13s  %13s\n", "server", "runs", "req/s", \
        "p50_us", "p90_us", "p99_us", "cpu_us/req", "req/s ratio", "cpu/req ratio"
    for (k = 1; k <= ns; k++) {
        s = srv[k]
        printf "%-" w "s  %4d  %12s  %9s  %9s  %9s  %10s  %13s  %13s\n", s, runs[s] + 0, \
            fmt(med("rate", s), "%.0f"), fmt(med("p50", s), "%.1f"), fmt(med("p90", s), "%.1f"), \
            fmt(med("p99", s), "%.1f"), fmt(med("cpu", s), "%.3f"), \
            fmt(med("rate_ratio", s), "%.3f"), fmt(med("cpu_ratio", s), "%.3f")
    }
    printf "(medians over rounds; ratios are medians of per-round ratios to %s)\n", first
}' "$results"

if ((keep_work)); then echo "compare-http: results and logs kept in $work"; fi
exit "$failed"
