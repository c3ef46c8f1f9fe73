#!/usr/bin/env bash
# bench-http.sh - RingPort's HTTP plaintext responder against SwiftNIO's NIOHTTP1, under wrk.
#
#   Benchmarks/scripts/bench-http.sh [--rounds R] [--duration S] [--connections N]
#
# Expects .build/release/ringport (make release; its `nio-http --transport posix` is the SwiftNIO
# baseline) and wrk (make bench-deps). compare-http.sh runs the two servers interleaved, wrk pinned to CPU 1, both
# answering GET /plaintext with the same bytes; then report.py writes
# Benchmarks/results/latest-http.md and latest-http.svg (raw results in
# Benchmarks/results/raw/http, not committed).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
rounds=3 duration=10 connections=64
while (($# > 0)); do
    case $1 in
        --rounds)      rounds=${2:?}; shift 2 ;;
        --duration)    duration=${2:?}; shift 2 ;;
        --connections) connections=${2:?}; shift 2 ;;
        *) echo "usage: $0 [--rounds R] [--duration S] [--connections N]" >&2; exit 1 ;;
    esac
done

[ -x .build/release/ringport ] || { echo "bench-http: build .build/release/ringport first (make release)" >&2; exit 1; }

raw=Benchmarks/results/raw/http
rm -rf "$raw"
out="$raw/1"
mkdir -p "$out"
echo "GET /plaintext, wrk -t1 -c$connections" >"$out/title"
status=0
Benchmarks/scripts/compare-http.sh --rounds "$rounds" --duration "$duration" \
    --connections "$connections" --threads 1 --out "$out" -- \
    nio_http1='.build/release/ringport nio-http --transport posix --port {PORT}' \
    ringport='.build/release/ringport http --port {PORT} --log-level error' \
    || status=1
echo
python3 Benchmarks/scripts/report.py --kind http --raw "$raw" \
    --markdown Benchmarks/results/latest-http.md --chart Benchmarks/results/latest-http.svg \
    --title "HTTP plaintext: RingPort and SwiftNIO NIOHTTP1 under wrk" \
    --client "wrk -t1 -c$connections -d${duration}s --latency pinned to CPU 1 (servers unpinned); same response bytes" \
    --command "make bench-http   # Benchmarks/scripts/bench-http.sh --rounds $rounds --duration $duration --connections $connections"
exit "$status"
