# shellcheck shell=bash
# compare-lib.sh - what compare-echo.sh and compare-http.sh share; sourced by them, not run.
#
# The sourcing script sets `prog` (the prefix of its messages, e.g. compare-echo) and its own
# option defaults, sources this file, and defines two functions:
#
#   own_option OPTION ARGS...  takes one of the script's own options, OPTION with its value in the
#                              next argument (the options still to parse are passed), and returns
#                              0; returns 1 for an option it does not know
#   run_server NAME LOG        runs the load against the server started for this run (PID in
#                              server_pid, listening on $host:$port; round $round of $rounds;
#                              server output in LOG), stops it with stop_server and records
#                              the results in $results, setting failed (and keep_work) on failure
#
# It then calls, in this order: parse_options "$@", its own checks of the values (is_int helps),
# parse_servers "${specs[@]}", prepare_runs, run_rounds, summarize, and exits with $failed.
#
# The script's usage text is its header: the comment lines from line 2 down to `set -e...`.

compare_script=${BASH_SOURCE[1]}    # the script that sources this file

usage() { sed -n '2,/^set -e/s/^# \{0,1\}//p' "$compare_script"; }
die() { echo "$prog: $*" >&2; exit 1; }
is_int() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

# ---------------------------------------------------------------------------------------
# Options and server arguments

# Defaults of the options every comparison takes.
rounds=3 duration=10 connections=64 warmup=1
# Server ports stay below Linux's ephemeral range (32768-60999 by default): a 1,000-connection
# load client's sockets from an earlier round could hold a port there.
host=127.0.0.1 client_cpu=1 port=$((20000 + RANDOM % 10000)) out_dir=""

# parse_options ARGS...: sets the common options, hands any other option to own_option, and
# leaves the name=command arguments after `--` in specs.  -h/--help prints the usage and exits
# 0; an unknown option prints it to stderr and exits 1.
parse_options() {
    while (($# > 0)); do
        case $1 in
            --rounds)      rounds=${2:?}; shift 2 ;;
            --duration)    duration=${2:?}; shift 2 ;;
            --connections) connections=${2:?}; shift 2 ;;
            --warmup)      warmup=${2:?}; shift 2 ;;
            --host)        host=${2:?}; shift 2 ;;
            --client-cpu)  client_cpu=${2:?}; shift 2 ;;
            --port-base)   port=${2:?}; shift 2 ;;
            --out)         out_dir=${2:?}; shift 2 ;;
            -h|--help)     usage; exit 0 ;;
            --)            shift; break ;;
            *)             own_option "$@" || { usage >&2; exit 1; }; shift 2 ;;
        esac
    done
    specs=("$@")
}

# parse_servers SPEC...: splits the name=command arguments into names and cmds.
parse_servers() {
    local spec name cmd
    names=() cmds=()
    for spec in "$@"; do
        [[ $spec == *=* && -n ${spec%%=*} ]] || die "expected name=command, got '$spec'"
        name=${spec%%=*} cmd=${spec#*=}
        [[ $name =~ ^[A-Za-z0-9_.+-]+$ ]] || die "server name '$name': use letters, digits, _ . + -"
        [[ $cmd == *'{PORT}'* ]] || die "command for '$name' has no {PORT} placeholder"
        [[ " ${names[*]} " != *" $name "* ]] || die "server name '$name' is used twice"
        names+=("$name") cmds+=("$cmd")
    done
}

# ---------------------------------------------------------------------------------------
# Work directory and client helpers

server_pid="" keep_work=0 failed=0

# prepare_runs: sets pin (the taskset prefix of client commands) and clk_tck, creates the work
# directory (--out, kept; or a temporary one, removed at exit unless keep_work gets set) with
# $results in it still to be written, and installs the clean-up traps.
prepare_runs() {
    pin=()
    [[ $client_cpu == none ]] || pin=(taskset -c "$client_cpu")
    clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

    keep_work=0
    if [[ -n $out_dir ]]; then
        mkdir -p "$out_dir"
        work=$out_dir keep_work=1
    else
        work=$(mktemp -d "${TMPDIR:-/tmp}/$prog.XXXXXX")
    fi
    results=$work/results.tsv
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# Time limit for a client run of $1 seconds.  The client stops by itself; timeout only guards
# against a wedged one (connect stalls etc.).
client_limit() { awk -v d="$1" -v n="$connections" 'BEGIN { print d + 30 + n / 100 }'; }

# cpu_us_per TICKS0 TICKS1 COUNT: server CPU microseconds per message or request between two
# cpu_ticks samples, with three decimals (NA if COUNT is 0).
cpu_us_per() {
    awk -v t=$(($2 - $1)) -v hz="$clk_tck" -v n="$3" \
        'BEGIN { if (n > 0) printf "%.3f", t * 1e6 / hz / n; else print "NA" }'
}

# ---------------------------------------------------------------------------------------
# Server process handling

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
        echo "$prog: server $server_pid ignored SIGTERM for 5 s: SIGKILL" >&2
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

cleanup() {
    stop_server
    if ((keep_work == 0)); then rm -rf "$work"; fi
}

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$host/$1" 2>/dev/null; }

# Next port nobody is listening on.
next_port() {
    local tries=0
    while :; do
        port=$((port + 1))
        ((port < 32768)) || port=20000
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
            echo "$prog: $name exited before listening on $host:$port: $cmd" >&2
            break
        fi
        if port_open "$port"; then return 0; fi
        sleep 0.1
    done
    ((i < 100)) || echo "$prog: $name not listening on $host:$port after 10 s: $cmd" >&2
    sed 's/^/    /' "$log" >&2
    keep_work=1
    exit 1
}

# ---------------------------------------------------------------------------------------
# Runs and summary

# run_rounds: every round runs every server once, each on a fresh port with its output in
# $work/NAME.roundR.log: start_server, then the script's run_server. The order rotates: round R
# starts with server mod N, so that no server always runs first, or always right after
# the same one (a server's place in the round moved its ratios by up to 15% on this VM).
run_rounds() {
    local i k name log
    for ((round = 1; round <= rounds; round++)); do
        for ((k = 0; k < ${#names[@]}; k++)); do
            i=$(((round - 1 + k) % ${#names[@]}))
            name=${names[$i]}
            next_port
            log="$work/$name.round$round.log"
            start_server "$name" "${cmds[$i]}" "$log"
            run_server "$name" "$log"
        done
    done
}

# summarize RATE_FIELD CPU_FIELD COLUMN...: prints a blank line and the table of $results per
# server: runs (the rounds with a RATE_FIELD value), then each COLUMN, then the line naming the
# first server; last, where the work directory was kept, if it was.  A COLUMN is
# KEY|HEADING|WIDTH|FORMAT: KEY is a field number of $results for the median over rounds of
# that field, or rate_ratio or cpu_ratio for the median of the per-round ratios of RATE_FIELD or
# CPU_FIELD to the first server's; the value is printed with FORMAT, NA if there is none.
summarize() {
    local rate_field=$1 cpu_field=$2 columns
    shift 2
    columns=$(IFS=';'; echo "$*")
    echo
    awk -F'\t' -v first="${names[0]}" -v order="${names[*]}" -v rate_field="$rate_field" \
        -v cpu_field="$cpu_field" -v columns="$columns" '
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
BEGIN {
    nc = split(columns, spec, ";")
    for (c = 1; c <= nc; c++) {
        split(spec[c], part, "|")
        key[c] = part[1]; heading[c] = part[2]; width[c] = part[3]; format[c] = part[4]
    }
}
NR == 1 { next }
{
    r = $1; s = $2
    rate[r, s] = $rate_field; cpu[r, s] = $cpu_field
    for (c = 1; c <= nc; c++) if (key[c] ~ /^[0-9]+$/) add(key[c], s, $(key[c]))
    if (ok($rate_field)) runs[s]++
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
    printf "%-" w "s  %4s", "server", "runs"
    for (c = 1; c <= nc; c++) printf "  %" width[c] "s", heading[c]
    printf "\n"
    for (k = 1; k <= ns; k++) {
        s = srv[k]
        printf "%-" w "s  %4d", s, runs[s] + 0
        for (c = 1; c <= nc; c++) printf "  %" width[c] "s", fmt(med(key[c], s), format[c])
        printf "\n"
    }
    printf "(medians over rounds; ratios are medians of per-round ratios to %s)\n", first
}' "$results"
    if ((keep_work)); then echo "$prog: results and logs kept in $work"; fi
}
