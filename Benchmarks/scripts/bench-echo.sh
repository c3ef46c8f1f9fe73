#!/usr/bin/env bash
# bench-echo.sh - RingPort's echo server against the C baselines, one grid point at a time.
#
#   Benchmarks/scripts/bench-echo.sh [--rounds R] [--duration S]
#
# Writes Benchmarks/results/latest.md (the table) and latest.svg (the chart) with report.py;
# the raw per-round results and server logs stay in Benchmarks/results/raw/echo (not committed).
#
# Builds the C programs (build-c.sh) and expects .build/release/ringport (make release) and
# Benchmarks/.build/release/nio-echo (make bench-deps).
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
[ -x Benchmarks/.build/release/nio-echo ] || { echo "bench-echo: build the SwiftNIO baseline first (make bench-deps)" >&2; exit 1; }
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
        swiftnio='Benchmarks/.build/release/nio-echo --port {PORT}' \
        ringport='.build/release/ringport echo --port {PORT} --log-level error' \
        || status=1
done
echo
python3 Benchmarks/scripts/report.py --kind echo --raw "$raw" \
    --markdown Benchmarks/results/latest.md --chart Benchmarks/results/latest.svg \
    --title "Echo throughput: RingPort, C liburing, C epoll, SwiftNIO" \
    --client "\`$ECHO_LOAD\` pinned to CPU 1 (servers unpinned), a 1 s warm-up run before each measured run" \
    --command "make bench   # Benchmarks/scripts/bench-echo.sh --rounds $rounds --duration $duration"
exit "$status"
