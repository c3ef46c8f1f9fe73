#!/usr/bin/env bash
# Build the C benchmark programs (Benchmarks/c/*.c) into Benchmarks/bin/.
#
#   Benchmarks/scripts/build-c.sh        # uses gcc; CC=clang or extra CFLAGS=... may be given
#
# echo_uring needs liburing (Debian: apt-get install liburing-dev).
set -euo pipefail

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$bench_dir/c"
out="$bench_dir/bin"
cc=${CC:-gcc}
# Word splitting of these two is intended.
cflags="-O2 -Wall -Wextra${CFLAGS:+ $CFLAGS}"
uring_libs=$(pkg-config --libs liburing 2>/dev/null || echo "-luring")

mkdir -p "$out"
build() {  # build NAME [LIBS...]
    local name=$1
    shift
    echo "$cc $cflags -o $out/$name $src/$name.c $*"
    # shellcheck disable=SC2086
    "$cc" $cflags -o "$out/$name" "$src/$name.c" "$@"
}

build echo_load
build idle_conns
build echo_epoll
# shellcheck disable=SC2086
build echo_uring $uring_libs
echo "built: $out/echo_load $out/idle_conns $out/echo_epoll $out/echo_uring"
