#!/usr/bin/env bash
# profile.sh [--connections N] [--size B] [--seconds S] [--command echo|async-echo] [--server "args"]
# RINGPORT=path profiles another build of ringport (default .build/release/ringport).
#
# Where the echo server's CPU goes under load: runs `ringport echo` (release build), loads it with
# `ringport load` (128-byte ping-pong over 64 connections by default, the client pinned to CPU 1),
# records the server with `perf record -e cpu-clock -g` (no hardware counters needed) for S
# seconds in the middle of the load, and prints the share of the server's CPU in the kernel and
# in user space (by shared object), and the top user-space symbols (demangled).
#
# Prints, last, one line `user-space share: X%` (what `make bench` quotes).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
connections=64 size=128 seconds=5 command=echo server_args="" port=${PROFILE_PORT:-$((20000 + RANDOM % 10000))}
while (($# > 0)); do
    case $1 in
        --connections) connections=${2:?}; shift 2 ;;
        --size)        size=${2:?}; shift 2 ;;
        --seconds)     seconds=${2:?}; shift 2 ;;
        --server)      server_args=${2:?}; shift 2 ;;
        --command)     command=${2:?}; shift 2 ;;
        *) echo "usage: $0 [--connections N] [--size B] [--seconds S] [--command CMD] [--server ARGS]" >&2; exit 1 ;;
    esac
done
ringport=${RINGPORT:-.build/release/ringport}
[ -x "$ringport" ] || { echo "profile: build $ringport first (make release)" >&2; exit 1; }
command -v perf >/dev/null || { echo "profile: perf not found (apt-get install linux-perf)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# shellcheck disable=SC2086
"$ringport" "$command" --port "$port" --log-level error $server_args >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
up=no
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && { up=yes; break; }; sleep 0.1; done
[ "$up" = yes ] || { echo "profile: the server did not listen on port $port:" >&2; cat "$work/server.log" >&2; exit 1; }
taskset -c 1 "$ringport" load --port "$port" --connections "$connections" --size "$size" \
    --duration $((seconds + 3)) --warmup 0 --quiet --json >"$work/load.json" 2>"$work/load.err" &
load=$!
sleep 1.5
perf record -e cpu-clock -g -p "$server" -o "$work/perf.data" -- sleep "$seconds" >"$work/perf.log" 2>&1 \
    || { echo "profile: perf record failed:" >&2; cat "$work/perf.log" >&2; exit 1; }
wait "$load" || { echo "profile: the load failed:" >&2; cat "$work/load.err" >&2; exit 1; }
kill -TERM "$server"; wait "$server" 2>/dev/null || true

echo "profile: ringport $command $server_args under ringport load ($connections connections x $size B ping-pong, client on CPU 1), $seconds s of perf cpu-clock samples"
python3 - "$work/load.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("load: {:,.0f} msgs/s, p99 {} us, {} errors".format(d["msgs/s"], d["p99_us"], d["errors"]))
PY
echo
echo "CPU by shared object:"
{ perf report -i "$work/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8; } || true
echo
echo "Top user-space symbols:"
perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | grep -v 'kernel.kallsyms' | head -15 \
    | while read -r share dso kind symbol _; do
        printf '  %7s  %-22s %s\n' "$share" "$dso" "$(swift demangle --simplified "$symbol" 2>/dev/null | sed 's/.*---> //' | cut -c1-90)"
    done || true
kernel=$(perf report -i "$work/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null \
    | awk '/kernel.kallsyms/ {gsub("%", "", $1); print $1}')
echo
python3 -c 'import sys; print(f"user-space share: {100 - float(sys.argv[1]):.1f}%")' "${kernel:-0}"
