#!/usr/bin/env bash
# bench-conns.sh - server memory per idle connection: RSS with N idle connections held open.
#
# usage: bench-conns.sh [options] [-- name1=command1 name2=command2 ...]
#
#   --connections N    idle connections measured (default 10000)
#   --warmup W         connections opened first and held during the measurement (default 1000)
#   --size B           bytes echoed once on every connection (default 32)
#   --sources K        source addresses 127.0.0.2 .. 127.0.0.(K+1) the client spreads its
#                      connections over (default 8; see Benchmarks/c/idle_conns.c)
#   --servers LIST     comma-separated subset of the default servers, in this order:
#                      c_liburing,c_epoll,swiftnio,ringport,ringport_async (default: all of them)
#   --ringport PATH    the ringport binary (default: $RINGPORT, else .build/release/ringport)
#   --settle S         seconds to wait after the server closed the connections before reading
#                      "closed" (default 0): how much memory comes back by itself
#   --rounds R         rounds; each round runs every server once, in the order given (default 3)
#   --host H           address the servers listen on and the client connects to (default 127.0.0.1)
#   --client-cpu C     CPU list the client is pinned to with taskset, or "none" (default 1)
#   --port-base P      first port to use; every run gets a fresh one (default: random 20000-29999)
#   --out DIR          keep server logs, client output and results.tsv in DIR (default: a
#                      temporary directory, removed at the end unless something failed)
#
# Servers given as name=command after `--` replace the default list; each command listens on
# the port substituted for {PORT} and must *become* the server process (it is run with `exec`),
# because the server's memory is read from /proc/PID of that PID; relative paths are relative
# to the repository's root. The defaults:
#
#   c_liburing  Benchmarks/bin/echo_uring --port {PORT}
#   c_epoll     Benchmarks/bin/echo_epoll --port {PORT}
#   swiftnio    RINGPORT nio-echo --transport posix --port {PORT}
#   ringport    RINGPORT echo --port {PORT} --log-level error --max-connections 20000
#               (more when warm-up + connections exceed 20000)
#   ringport_async  RINGPORT async-echo --port {PORT} --log-level error
#
# Per run: raise the descriptor limit (ulimit -n, inherited by server and client), start the
# server, wait for its port, read its memory ("fresh"); open W warm-up connections with
# idle_conns (each echoes --size bytes once) and keep them open; read the memory ("before");
# open N more (again one echo each, so every connection was accepted and served and whatever
# buffers the server keeps per connection were touched) and read the memory with W + N idle
# ("idle"); close all of them, wait until the server has closed them too, read the memory
# ("closed"); stop the server.  Memory is read once the server holds exactly as many more
# descriptors as there are connections, plus a short pause: VmRSS from /proc/PID/status and
# Pss from /proc/PID/smaps_rollup.
#
#   bytes per connection = (memory idle - memory before) / N
#
# The warm-up connections stay open because servers pool per-connection objects: warm-up
# connections closed again would leave their objects in the pools, and the first W of the N
# measured connections would reuse them without growing the RSS.  What the warm-up does pay for
# is what does not grow with the connection count: provided-buffer and write-buffer pages
# touched by the first echoes, malloc arenas of worker threads.  A buffer ring hands its
# buffers out in turn, so a warm-up smaller than the pool (1024 buffers per ring in RingPort and
# echo_uring) leaves page faults for the measured connections: 1000 leaves 24 pages, about 10
# bytes per connection at N = 10000, but --warmup 200 --connections 2000 more than doubles
# RingPort's figure.  RSS is user-space memory only: the kernel's socket buffers and io_uring
# requests are not in it.
#
# At the end, per server: medians over rounds of the RSS fresh, before, idle and after close
# (MiB), bytes per idle connection by RSS and by PSS, and the ratio of bytes per connection to
# the first server's.
#
# Exit status: 0 if every connection of every run was established, echoed and held, and the
# server held them all; 1 otherwise.  About 12 s per round for the four defaults on 2 cores.
# Needs: bash, coreutils, awk, taskset (util-linux), Benchmarks/bin/idle_conns and the C
# servers (Benchmarks/scripts/build-c.sh builds them; IDLE_CONNS=path overrides the client).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench_dir=$root/Benchmarks
client=${IDLE_CONNS:-$bench_dir/bin/idle_conns}

prog=bench-conns
# shellcheck source=compare-lib.sh
source "$bench_dir/scripts/compare-lib.sh"

# ---------------------------------------------------------------------------------------
# Options

rounds=3 connections=10000 warmup=1000
# Listen below the ephemeral port range (32768-60999 by default): with tens of thousands of
# client sockets in TIME_WAIT, a port from that range may still be taken when a server binds it.
port=$((20000 + RANDOM % 10000))
size=32 sources=8 server_list="" settle=0 ringport=${RINGPORT:-.build/release/ringport}
own_option() {
    case $1 in
        --size)     size=${2:?} ;;
        --sources)  sources=${2:?} ;;
        --servers)  server_list=${2:?} ;;
        --ringport) ringport=${2:?} ;;
        --settle)   settle=${2:?} ;;
        *)          return 1 ;;
    esac
}
parse_options "$@"

is_count() { [[ $1 =~ ^(0|[1-9][0-9]*)$ ]]; }
is_int "$rounds" || die "--rounds must be a positive integer"
is_int "$connections" || die "--connections must be a positive integer"
is_count "$warmup" || die "--warmup must be a number of connections"
is_count "$size" || die "--size must be a number of bytes"
is_count "$sources" || die "--sources must be a number of addresses"
is_count "$settle" || die "--settle must be a number of seconds"
is_int "$port" && ((port < 65536)) || die "--port-base must be a port number"
[[ -x $client ]] || die "$client not found: run Benchmarks/scripts/build-c.sh first"

# Relative server paths (the defaults, --ringport, name=command) are relative to the repository.
[[ -z $out_dir || $out_dir == /* ]] || out_dir=$PWD/$out_dir
[[ $client == /* ]] || client=$PWD/$client
cd "$root"

if ((${#specs[@]} == 0)); then
    max_connections=$((connections + warmup + 16 > 20000 ? connections + warmup + 16 : 20000))
    declare -A default_cmd=(
        [c_liburing]="Benchmarks/bin/echo_uring --port {PORT}"
        [c_epoll]="Benchmarks/bin/echo_epoll --port {PORT}"
        [swiftnio]="$ringport nio-echo --transport posix --port {PORT}"
        [ringport]="$ringport echo --port {PORT} --log-level error --max-connections $max_connections"
        [ringport_async]="$ringport async-echo --port {PORT} --log-level error"
    )
    IFS=, read -r -a wanted <<<"${server_list:-c_liburing,c_epoll,swiftnio,ringport,ringport_async}"
    for name in "${wanted[@]}"; do
        [[ -n ${default_cmd[$name]:-} ]] || die "unknown server '$name' (c_liburing, c_epoll, swiftnio, ringport, ringport_async)"
        binary=${default_cmd[$name]%% *}
        if [[ ! -x $binary ]]; then
            die "$name: $binary not found (build it first)"
        fi
        specs+=("$name=${default_cmd[$name]}")
    done
elif [[ -n $server_list ]]; then
    die "give either --servers or name=command arguments, not both"
fi
((${#specs[@]} > 0)) || die "no server to run"
parse_servers "${specs[@]}"

# Descriptors: the server holds every connection (and the listener, rings, ...), each client
# its own. Raise the soft limit to what is needed, the hard one too if it is lower (as root).
need=$((connections + warmup + 256))
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < need)); then
    ulimit -Hn "$need" 2>/dev/null ||
        die "$need descriptors needed, the hard limit is $hard and cannot be raised here (ulimit -Hn)"
fi
soft=$(ulimit -Sn)
if [[ $soft != unlimited ]] && ((soft < need)); then ulimit -Sn "$need"; fi

prepare_runs
printf 'round\tserver\tfresh_mib\tbefore_mib\tidle_mib\tclosed_mib\tb_per_conn_rss\tb_per_conn_pss\n' \
    >"$results"

# ---------------------------------------------------------------------------------------
# Runs

client_pids=()

# Stops every idle_conns still running (SIGTERM ends its hold; it then closes and exits).
stop_clients() {
    local pid
    for pid in "${client_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${client_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    client_pids=()
}

# The library's clean-up, and the clients first.
cleanup() {
    stop_clients
    stop_server
    if ((keep_work == 0)); then rm -rf "$work"; fi
}

# mem PID: "VmRSS Pss" of PID in kB.
mem() {
    local vmrss pss
    vmrss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status") || return 1
    pss=$(awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup") || return 1
    echo "$vmrss $pss"
}

# fd_count PID: the number of open descriptors of PID.
fd_count() {
    local fds=("/proc/$1/fd/"*)
    echo "${#fds[@]}"
}

# wait_fds PID OP COUNT SECONDS: waits until PID's descriptor count OP (-ge or -le) COUNT,
# then a short pause for the server to finish what it does around it; false on time-out.
wait_fds() {
    local i n
    for ((i = 0; i < $4 * 20; i++)); do
        n=$(fd_count "$1")
        if [ "$n" "$2" "$3" ]; then
            sleep 0.5
            return 0
        fi
        sleep 0.05
    done
    echo "$prog: server has $n descriptors after $4 s, expected $2 $3" >&2
    return 1
}

# open_conns COUNT OUT LOG: starts idle_conns with COUNT connections (output in OUT, errors
# appended to LOG), returns once it printed "ready"; false if it exited or took too long.
# The client's own --hold is only a backstop: run_server (or stop_clients) ends the hold.
open_conns() {
    local count=$1 out=$2 log=$3 limit i pid
    limit=$(awk -v n="$count" 'BEGIN { print int(20 + n / 500) }')
    : >"$out"    # before the client's own redirection, which runs in the background
    "${pin[@]}" "$client" --host "$host" --port "$port" --connections "$count" --size "$size" \
        --sources "$sources" --timeout "$limit" --hold 300 </dev/null >"$out" 2>>"$log" &
    pid=$!
    client_pids+=("$pid")
    for ((i = 0; i < (limit + 5) * 20; i++)); do
        if grep -q '^ready' "$out"; then return 0; fi
        alive "$pid" || break
        sleep 0.05
    done
    echo "$prog: idle_conns ($count connections) did not get ready; see $log" >&2
    return 1
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
per_conn() { awk -v a="$1" -v b="$2" -v n="$connections" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }'; }

# run_server NAME LOG: the measurement against the server just started (see the header).
run_server() {
    local name=$1 log=$2 fds0 fresh before idle closed rc ok=1 out clog
    out="$work/$name.round$round"
    clog="$out.client.log"    # not the server's log: the server does not append to it
    sleep 0.3
    fds0=$(fd_count "$server_pid")
    read -r -a fresh < <(mem "$server_pid") || ok=0

    if ((warmup > 0)); then
        open_conns "$warmup" "$out.warmup.out" "$clog" &&
            wait_fds "$server_pid" -ge $((fds0 + warmup)) 10 || ok=0
    fi
    ((ok)) && { read -r -a before < <(mem "$server_pid") || ok=0; }
    if ((ok)); then
        open_conns "$connections" "$out.conns.out" "$clog" &&
            wait_fds "$server_pid" -ge $((fds0 + warmup + connections)) 10 || ok=0
    fi
    ((ok)) && { read -r -a idle < <(mem "$server_pid") || ok=0; }

    # Close: every client must end cleanly ("closed ... failed 0", exit 0).
    local pid
    for pid in "${client_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${client_pids[@]}"; do
        rc=0
        wait "$pid" || rc=$?
        ((rc == 0)) || { echo "$prog: idle_conns against $name exited with $rc; see $clog" >&2; ok=0; }
    done
    client_pids=()
    if ((ok)); then
        wait_fds "$server_pid" -le "$fds0" 15 || ok=0
        sleep "$settle"
        read -r -a closed < <(mem "$server_pid") || ok=0
    fi
    alive "$server_pid" || { echo "$prog: $name exited during the run; see $log" >&2; ok=0; }
    stop_server

    if ((!ok)); then
        echo "round $round/$rounds  $name: FAILED (see $log and $clog)" >&2
        printf '%s\t%s\tNA\tNA\tNA\tNA\tNA\tNA\n' "$round" "$name" >>"$results"
        failed=1 keep_work=1
        return 0
    fi
    local row=("$(mib "${fresh[0]}")" "$(mib "${before[0]}")" "$(mib "${idle[0]}")"
               "$(mib "${closed[0]}")" "$(per_conn "${before[0]}" "${idle[0]}")"
               "$(per_conn "${before[1]}" "${idle[1]}")")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "${row[@]}" >>"$results"
    printf 'round %d/%d  %-12s RSS MiB: fresh=%-7s before=%-7s idle=%-7s closed=%-7s bytes/conn: rss=%-6s pss=%s\n' \
        "$round" "$rounds" "$name" "${row[@]}"
}

echo "$prog: ${#names[@]} servers x $rounds rounds; $warmup warm-up + $connections measured idle" \
     "connections, $size bytes echoed on each, over $sources source addresses; ulimit -n $(ulimit -n)"
echo "$prog: logs in $work"
run_rounds

# ---------------------------------------------------------------------------------------
# Summary: medians per server, and the ratio of bytes per connection to the first server's.

kept=$keep_work keep_work=0    # summarize would name the kept directory before our note
summarize 7 8 '3|fresh MiB|9|%.1f' '4|before MiB|10|%.1f' '5|idle MiB|9|%.1f' \
    '6|closed MiB|10|%.1f' '7|B/conn RSS|10|%.0f' '8|B/conn PSS|10|%.0f' 'rate_ratio|RSS/conn ratio|14|%.2f'
echo "(before: $warmup warm-up connections open; idle: $warmup + $connections;" \
     "B/conn = (idle - before) / $connections)"
keep_work=$kept
if ((keep_work)); then echo "$prog: results and logs kept in $work"; fi
exit "$failed"
