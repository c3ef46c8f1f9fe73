#!/usr/bin/env bash
# profile.sh [--connections N] [--size B] [--seconds S] [--rounds R] [--command echo|async-echo] [--server "args"]
# RINGPORT=path profiles another build of ringport (default .build/release/ringport).
#
# Where the echo server's CPU goes under load: runs `ringport echo` (release build), loads it with
# `ringport load` (128-byte ping-pong over 64 connections by default, the client pinned to CPU 1),
# records the server with `perf record -e cpu-clock` (no hardware counters needed) for S seconds
# in the middle of the load, and prints the share of the server's CPU in the kernel and in user
# space (by shared object), and the top user-space symbols (demangled).
#
# R rounds (3 by default), each a fresh server: a single run's share moves by several points on
# this kind of machine. Each round prints its share and its user-space samples per 1,000 messages
# (what compares two builds); the tables are those of the median round.
#
# No call graphs are recorded: nothing here reads them, and recording them (-g) disturbs what is
# measured. In 5 s of one server under this load, perf with -g woke 837,373 times to write its
# data and kept 13,223 samples; without -g it woke 3 times and kept 19,757. The recorder then
# competes with the server and the client for the two cores, and the measured share moved by 3 to
# 9 points (interleaved runs of one build, with -g then without: 13.4/10.7, 11.4/7.4, 9.2/5.3,
# 16.0/7.2, 13.7/7.4, 14.2/7.1%).
#
# Prints, last, one line `user-space share: X%` (the median; what `make bench` quotes).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
connections=64 size=128 seconds=5 rounds=3 command=echo server_args=""
while (($# > 0)); do
    case $1 in
        --connections) connections=${2:?}; shift 2 ;;
        --size)        size=${2:?}; shift 2 ;;
        --seconds)     seconds=${2:?}; shift 2 ;;
        --rounds)      rounds=${2:?}; shift 2 ;;
        --server)      server_args=${2:?}; shift 2 ;;
        --command)     command=${2:?}; shift 2 ;;
        *) echo "usage: $0 [--connections N] [--size B] [--seconds S] [--rounds R] [--command CMD] [--server ARGS]" >&2; exit 1 ;;
    esac
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "profile: --rounds must be a positive number" >&2; exit 1; }
ringport=${RINGPORT:-.build/release/ringport}
[ -x "$ringport" ] || { echo "profile: build $ringport first (make release)" >&2; exit 1; }
command -v perf >/dev/null || { echo "profile: perf not found (apt-get install linux-perf)" >&2; exit 1; }
work=$(mktemp -d)
server=""
trap '{ [ -n "$server" ] && kill "$server" 2>/dev/null; } || true; rm -rf "$work"' EXIT

# profile_round N: one fresh server under load, recorded into $work/perf.N.data, the load's report
# in $work/load.N.json.
profile_round() {
    local round=$1 port=${PROFILE_PORT:-$((20000 + RANDOM % 10000))} up=no load
    # shellcheck disable=SC2086
    "$ringport" "$command" --port "$port" --log-level error $server_args >"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && { up=yes; break; }; sleep 0.1; done
    [ "$up" = yes ] || { echo "profile: the server did not listen on port $port:" >&2; cat "$work/server.log" >&2; exit 1; }
    taskset -c 1 "$ringport" load --port "$port" --connections "$connections" --size "$size" \
        --duration $((seconds + 3)) --warmup 0 --quiet --json >"$work/load.$round.json" 2>"$work/load.err" &
    load=$!
    sleep 1.5
    perf record -e cpu-clock -p "$server" -o "$work/perf.$round.data" -- sleep "$seconds" >"$work/perf.log" 2>&1 \
        || { echo "profile: perf record failed:" >&2; cat "$work/perf.log" >&2; exit 1; }
    wait "$load" || { echo "profile: the load failed:" >&2; cat "$work/load.err" >&2; exit 1; }
    kill -TERM "$server"; wait "$server" 2>/dev/null || true
    server=""
}

echo "profile: ringport $command $server_args under ringport load ($connections connections x $size B ping-pong, client on CPU 1), $rounds rounds of $seconds s of perf cpu-clock samples"
for round in $(seq "$rounds"); do
    profile_round "$round"
    perf report -i "$work/perf.$round.data" --no-children --sort dso --stdio -g none -F sample,dso 2>/dev/null \
        | grep -v '^#' | grep -v '^$' >"$work/dso.$round.txt" \
        || { echo "profile: perf report of round $round failed" >&2; exit 1; }
done

# One line per round; the median round's number on the last line of $work/median.
python3 - "$work" "$rounds" "$seconds" <<'PY'
import json, statistics, sys
work, rounds, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
results = []
for round in range(1, rounds + 1):
    load = json.load(open(f"{work}/load.{round}.json"))
    kernel = user = 0
    for line in open(f"{work}/dso.{round}.txt"):
        fields = line.split()
        if len(fields) < 2 or not fields[0].isdigit():
            continue
        if fields[1] == "[kernel.kallsyms]":
            kernel += int(fields[0])
        else:
            user += int(fields[0])
    share = 100 * user / (user + kernel) if user + kernel else 0
    per_thousand = 1000 * user / (load["msgs/s"] * seconds) if load["msgs/s"] else 0
    results.append((share, round))
    print(f"round {round}: user-space share {share:.1f}%, {per_thousand:.2f} user-space samples per 1,000 messages; "
          f"load {load['msgs/s']:,.0f} msgs/s, p99 {load['p99_us']} us, {load['errors']} errors")
shares = sorted(results)
median = shares[(len(shares) - 1) // 2]
with open(f"{work}/median", "w") as out:
    out.write(f"{median[1]}\n{median[0]:.1f}\n" + ", ".join(f"{s:.1f}" for s, _ in results) + "\n")
PY
median_round=$(sed -n 1p "$work/median")
median_share=$(sed -n 2p "$work/median")
all_shares=$(sed -n 3p "$work/median")
echo
echo "CPU by shared object (round $median_round, the median):"
{ perf report -i "$work/perf.$median_round.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8; } || true
echo
echo "Top user-space symbols (round $median_round):"
perf report -i "$work/perf.$median_round.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | grep -v 'kernel.kallsyms' | head -15 \
    | while read -r share dso kind symbol _; do
        printf '  %7s  %-22s %s\n' "$share" "$dso" "$(swift demangle --simplified "$symbol" 2>/dev/null | sed 's/.*---> //' | cut -c1-90)"
    done || true
echo
echo "user-space share: $median_share% (median of $rounds rounds: $all_shares)"
