#!/usr/bin/env bash
# bench-echo.sh - RingPort's echo servers (the completion-port handler on io_uring and on its epoll
# backend, and the async/await one) against the C and SwiftNIO baselines, one grid point at a time.
#
#   Benchmarks/scripts/bench-echo.sh [--rounds R] [--duration S]
#
# Writes Benchmarks/results/latest.md (the table) and latest.svg (the chart) with report.py;
# the raw per-round results and server logs stay in Benchmarks/results/raw/echo (not committed).
#
# Builds the C programs (build-c.sh) and expects .build/release/ringport (make release; its
# `nio-echo --transport posix` is the SwiftNIO baseline).
# For each grid point, compare-echo.sh runs the servers interleaved (A B C A B C ...), the load
# client pinned to CPU 1, and prints medians over rounds and the ratios to the C liburing server.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
rounds=3 duration=5
while (($# > 0)); do
    case $1 in
        --rounds)   rounds=${2:?}; shift 2 ;;
        --duration) duration=${2:?}; shift 2 ;;
        *) echo "usage: $0 [--rounds R] [--duration S]" >&2; exit 1 ;;
    esac
done

[ -x .build/release/ringport ] || { echo "bench-echo: build .build/release/ringport first (make release)" >&2; exit 1; }
Benchmarks/scripts/build-c.sh >/dev/null

grid=(
    "128 B x 64 connections, ping-pong|--connections 64 --size 128 --depth 1"
    "128 B x 1000 connections, ping-pong|--connections 1000 --size 128 --depth 1"
    "16 KiB x 64 connections, ping-pong|--connections 64 --size 16384 --depth 1"
    "128 B x 64 connections, 16 in flight|--connections 64 --size 128 --depth 16"
)
raw=Benchmarks/results/raw/echo
rm -rf "$raw"
mkdir -p "$raw"
status=0 index=0
# The load client: RingPort's own (ringport load); ECHO_LOAD=Benchmarks/bin/echo_load runs the
# same grid with the C client instead.
export ECHO_LOAD=${ECHO_LOAD:-.build/release/ringport load --quiet}
echo "bench-echo: load client: $ECHO_LOAD (pinned to CPU 1)"
for point in "${grid[@]}"; do
    title=${point%%|*}
    index=$((index + 1))
    out="$raw/$index"
    mkdir -p "$out"
    echo "$title" >"$out/title"
    # shellcheck disable=SC2086
    set -- ${point#*|}
    echo
    echo "## [$index/${#grid[@]}] $title ($rounds rounds x ${duration} s)"
    Benchmarks/scripts/compare-echo.sh --rounds "$rounds" --duration "$duration" --out "$out" "$@" -- \
        c_liburing='Benchmarks/bin/echo_uring --port {PORT}' \
        c_epoll='Benchmarks/bin/echo_epoll --port {PORT}' \
        swiftnio='.build/release/ringport nio-echo --transport posix --port {PORT}' \
        ringport='.build/release/ringport echo --port {PORT} --log-level error' \
        ringport_epoll='.build/release/ringport echo --port {PORT} --log-level error --backend epoll' \
        ringport_async='.build/release/ringport async-echo --port {PORT} --log-level error' \
        || status=1
done

# Beside the table: the spread of RingPort's CPU per message over five fresh runs at 1,000
# connections (a run whose leader was taken over used to cost up to 45% more), with the takeovers
# each counted, and where the server's CPU goes at 128 B x 64 (make profile).
echo
echo "## Five fresh 1,000-connection runs of RingPort and of the C liburing server, interleaved"
spread=$raw-spread
rm -rf "$spread"
mkdir -p "$spread"
Benchmarks/scripts/compare-echo.sh --rounds 5 --duration "$duration" --out "$spread" \
    --connections 1000 --size 128 --depth 1 -- \
    c_liburing='Benchmarks/bin/echo_uring --port {PORT}' \
    ringport='.build/release/ringport echo --port {PORT} --log-level error' || status=1
echo
echo "## Where the server's CPU goes (make profile, 128 B x 64)"
# (tried twice: a run whose load or perf fails says why in its output)
profile_output=$(Benchmarks/scripts/profile.sh --seconds 5 2>&1) \
    || profile_output=$(Benchmarks/scripts/profile.sh --seconds 5 2>&1) || status=1
echo "$profile_output"
python3 - "$spread" "$raw/extra.md" "$raw" <<'PY' "$profile_output"
import csv, os, re, statistics, sys
spread, out, raw, profile = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

def per_round_ratio(rows, subject, other, field):
    """Median over rounds of subject / other for field (rounds where both have a number)."""
    by_round = {}
    for row in rows:
        try:
            by_round.setdefault(row["round"], {})[row["server"]] = float(row[field])
        except ValueError:
            pass
    ratios = [r[subject] / r[other] for r in by_round.values() if r.get(subject) and r.get(other)]
    return "{:.3f}".format(statistics.median(ratios)) if ratios else "NA"

def ratio_section(server, heading, description, baselines):
    """A table of server ÷ each (baseline, its label), msgs/s and CPU/msg, one row per load."""
    header = "| Load | " + " | ".join(f"msgs/s ÷ {label} | CPU/msg ÷ {label}" for _, label in baselines) + " |"
    section = [heading, "", description, "", header, "|---|" + "---:|" * (2 * len(baselines))]
    for point in sorted((d for d in os.listdir(raw) if d.isdigit()), key=int):
        directory = os.path.join(raw, point)
        rows = list(csv.DictReader(open(os.path.join(directory, "results.tsv")), delimiter="\t"))
        title = open(os.path.join(directory, "title")).read().strip()
        section.append(f"| {title} | " + " | ".join(
            per_round_ratio(rows, server, other, field)
            for other, _ in baselines for field in ("msgs_per_s", "cpu_us_per_msg")) + " |")
    return section + [""]

# The epoll backend against SwiftNIO (also epoll) and against RingPort on io_uring, per load; the
# async/await echo against the completion-port echo and against SwiftNIO.
lines = ratio_section(
    "ringport_epoll", "## The epoll backend",
    "`ringport echo --backend epoll` (the backend RingPort falls back to where io_uring is refused) "
    "÷ SwiftNIO and ÷ RingPort on io_uring, in the same rounds as the table; medians of per-round "
    "ratios.", [("swiftnio", "SwiftNIO"), ("ringport", "io_uring")])
lines += ratio_section(
    "ringport_async", "## The async/await echo",
    "`ringport async-echo` (RingPortAsync: a task per connection iterating its inbound `ByteBuffer`s "
    "and writing each back) ÷ the completion-port echo (`ringport echo`) and ÷ SwiftNIO, in the same "
    "rounds as the table; medians of per-round ratios.", [("ringport", "ringport echo"), ("swiftnio", "SwiftNIO")])

rows = list(csv.DictReader(open(os.path.join(spread, "results.tsv")), delimiter="\t"))
lines += ["## The spread at 1,000 connections", "",
         "Five fresh server processes each, RingPort's and the C liburing server's interleaved, under "
         "128 B × 1,000 ping-pong (same load client and duration as the table). This VM's runs are "
         "bimodal (the scheduler's placement of the server beside the pinned client), for C as for "
         "RingPort: the C server's spread is the floor of what RingPort's can show here.", "",
         "| Run | RingPort msgs/s | RingPort CPU µs/msg | leader takeovers | C msgs/s | C CPU µs/msg |",
         "|---:|---:|---:|---:|---:|---:|"]
cpus = {"ringport": [], "c_liburing": []}
by_round = {}
for row in rows:
    cpu = float(row["cpu_us_per_msg"]) if row["cpu_us_per_msg"] not in ("", "NA") else None
    rate = float(row["msgs_per_s"]) if row["msgs_per_s"] not in ("", "NA") else None
    if cpu: cpus[row["server"]].append(cpu)
    by_round.setdefault(row["round"], {})[row["server"]] = (rate, cpu)
for round_id in sorted(by_round, key=int):
    log = os.path.join(spread, f"ringport.round{round_id}.log")
    text = open(log).read() if os.path.exists(log) else ""
    found = re.search(r"(\d+) leader takeovers", text)
    ours = by_round[round_id].get("ringport", (None, None))
    theirs = by_round[round_id].get("c_liburing", (None, None))
    cell = lambda value, pattern: pattern.format(value) if value else "NA"
    lines.append(f"| {round_id} | {cell(ours[0], '{:,.0f}')} | {cell(ours[1], '{:.3f}')} | "
                 f"{found.group(1) if found else '?'} | {cell(theirs[0], '{:,.0f}')} | {cell(theirs[1], '{:.3f}')} |")
spreads = {name: max(v) / min(v) for name, v in cpus.items() if v}
lines += ["", "CPU per message, max ÷ min: RingPort **{:.3f}**, C liburing {:.3f}.".format(
    spreads.get("ringport", float("nan")), spreads.get("c_liburing", float("nan"))), ""]
share = re.search(r"user-space share: ([\d.]+)%", profile)
lines += ["## Where the server's CPU goes", "",
          f"`make profile` (perf `cpu-clock` samples of `ringport echo` under 128 B × 64 ping-pong, the median of three fresh servers): "
          f"user-space share of the server's CPU **{share.group(1) if share else '?'}%**.", "", "```",
          profile.strip(), "```", ""]
open(out, "w").write("\n".join(lines))
PY

echo
python3 Benchmarks/scripts/report.py --kind echo --raw "$raw" --extra "$raw/extra.md" \
    --markdown Benchmarks/results/latest.md --chart Benchmarks/results/latest.svg \
    --title "Echo throughput: RingPort (io_uring and epoll backends, async/await), C liburing, C epoll, SwiftNIO" \
    --client "\`$ECHO_LOAD\` pinned to CPU 1 (servers unpinned), a 1 s warm-up run before each measured run" \
    --command "make bench   # Benchmarks/scripts/bench-echo.sh --rounds $rounds --duration $duration"
exit "$status"
