#!/usr/bin/env bash
# bench-nio.sh - the same SwiftNIO pipelines on RingPortNIO and on NIOPosix.
#
#   Benchmarks/scripts/bench-nio.sh [--rounds R] [--duration S]
#
# Expects .build/release/ringport (make release) and wrk (make load-tools). Two loads, each with
# the servers interleaved (A B A B ...), the client pinned to CPU 1:
#
#   HTTP  `ringport nio-http` (NIOHTTP1's server pipeline answering GET /plaintext) under
#         wrk -t1 -c64 (compare-http.sh);
#   echo  `ringport nio-echo` (one echo handler) under `ringport load`, 128 B x 64 ping-pong
#         (compare-echo.sh);
#
# each with --transport ringport (RingPortNIO on the completion port, its default shape) and
# --transport posix (NIOPosix, one event loop thread, as the other SwiftNIO baselines). Then
# report.py writes Benchmarks/results/latest-nio-http.md / .svg and latest-nio-echo.md / .svg
# (raw results in Benchmarks/results/raw/nio-*, not committed), with the medians of the
# per-round ratios of RingPortNIO to NIOPosix.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
rounds=5 duration=10
while (($# > 0)); do
    case $1 in
        --rounds)   rounds=${2:?}; shift 2 ;;
        --duration) duration=${2:?}; shift 2 ;;
        *) echo "usage: $0 [--rounds R] [--duration S]" >&2; exit 1 ;;
    esac
done

[ -x .build/release/ringport ] || { echo "bench-nio: build .build/release/ringport first (make release)" >&2; exit 1; }
ringport=.build/release/ringport
status=0

raw=Benchmarks/results/raw/nio-http
rm -rf "$raw"
mkdir -p "$raw/1"
echo "NIOHTTP1 GET /plaintext, wrk -t1 -c64" >"$raw/1/title"
echo "## NIOHTTP1 pipeline under wrk -t1 -c64 ($rounds rounds x ${duration} s)"
Benchmarks/scripts/compare-http.sh --rounds "$rounds" --duration "$duration" \
    --connections 64 --threads 1 --out "$raw/1" -- \
    ringport_nio="$ringport nio-http --transport ringport --port {PORT} --log-level error" \
    nio_posix="$ringport nio-http --transport posix --port {PORT} --log-level error" \
    || status=1
python3 Benchmarks/scripts/report.py --kind http --raw "$raw" --subject ringport_nio \
    --markdown Benchmarks/results/latest-nio-http.md --chart Benchmarks/results/latest-nio-http.svg \
    --title "SwiftNIO's HTTP/1.1 pipeline on RingPortNIO and on NIOPosix" \
    --client "wrk -t1 -c64 -d${duration}s --latency pinned to CPU 1 (servers unpinned); same pipeline and handler" \
    --command "make bench-nio   # Benchmarks/scripts/bench-nio.sh --rounds $rounds --duration $duration"

raw=Benchmarks/results/raw/nio-echo
rm -rf "$raw"
mkdir -p "$raw/1"
echo "128 B x 64 connections, ping-pong" >"$raw/1/title"
echo
echo "## Echo pipeline, 128 B x 64 connections ping-pong ($rounds rounds x ${duration} s)"
export ECHO_LOAD=${ECHO_LOAD:-$ringport load --quiet}
Benchmarks/scripts/compare-echo.sh --rounds "$rounds" --duration "$duration" --out "$raw/1" \
    --connections 64 --size 128 --depth 1 -- \
    ringport_nio="$ringport nio-echo --transport ringport --port {PORT} --log-level error" \
    nio_posix="$ringport nio-echo --transport posix --port {PORT} --log-level error" \
    || status=1
python3 Benchmarks/scripts/report.py --kind echo --raw "$raw" --subject ringport_nio \
    --markdown Benchmarks/results/latest-nio-echo.md --chart Benchmarks/results/latest-nio-echo.svg \
    --title "A SwiftNIO echo pipeline on RingPortNIO and on NIOPosix" \
    --client "ringport load pinned to CPU 1 (servers unpinned); same pipeline and handler" \
    --command "make bench-nio   # Benchmarks/scripts/bench-nio.sh --rounds $rounds --duration $duration"
exit "$status"
