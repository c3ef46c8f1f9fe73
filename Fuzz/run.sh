#!/usr/bin/env bash
# Fuzz/run.sh [SECONDS] — builds every fuzz target under Fuzz/ with libFuzzer and the address
# sanitizer (swiftc -sanitize=fuzzer,address) and runs each for SECONDS (default 60). Exits 1
# when a target crashes, times out, runs out of memory or fails one of its properties, after
# printing where the input that did it is and how to replay and minimize it; 2 when it cannot
# build or run.
#
# Needs nothing but the Swift toolchain: libFuzzer (libclang_rt.fuzzer) and the sanitizer
# runtimes ship with it.
#
# A target is a directory Fuzz/<Name>/ holding
#   sources.txt    the files of Sources/ to compile in (the code under test), one path a line
#   *.swift        the entry point (LLVMFuzzerTestOneInput) and the properties it checks
#   corpus/        the committed seed corpus
#   regressions/   inputs that once failed
#   *.dict         a libFuzzer dictionary (optional)
# The committed corpus and regressions are copied into a working corpus outside the repository,
# which libFuzzer grows; nothing under Fuzz/ is written. Merge new inputs back by hand (the
# script prints how).
#
# Environment:
#   FUZZ_BUILD_DIR  where the binaries go (default: .build-fuzz in the repository, gitignored)
#   FUZZ_WORK_DIR   working corpora, crash artifacts, logs (default: ${TMPDIR:-/tmp}/ringport-fuzz)
#   FUZZ_TARGETS    the targets to run, separated by spaces (default: every one)
#   FUZZ_ARGS       more libFuzzer options, e.g. "-seed=1" or "-use_value_profile=1"
#   SWIFTC          the Swift compiler (default: swiftc on PATH, else /opt/swift/usr/bin/swiftc)

set -euo pipefail

duration=${1:-60}
if ! [[ $duration =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: Fuzz/run.sh [SECONDS]   (seconds per target, default 60)" >&2
    exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_dir=$repo/Fuzz
build_dir=${FUZZ_BUILD_DIR:-$repo/.build-fuzz}
work_dir=${FUZZ_WORK_DIR:-${TMPDIR:-/tmp}/ringport-fuzz}
swiftc=${SWIFTC:-$(command -v swiftc || echo /opt/swift/usr/bin/swiftc)}
if [[ ! -x $swiftc ]]; then
    echo "run.sh: no Swift compiler (looked for swiftc on PATH and /opt/swift/usr/bin/swiftc; set SWIFTC)" >&2
    exit 2
fi
toolchain_bin=$(dirname "$(readlink -f "$swiftc")")

# The Swift runtime's own crash backtracer would run (and can hang) after libFuzzer's handler;
# libFuzzer and the sanitizer print the stack. Symbolize with the toolchain's llvm-symbolizer.
export SWIFT_BACKTRACE=enable=no
if [[ -x $toolchain_bin/llvm-symbolizer ]]; then
    export ASAN_SYMBOLIZER_PATH=$toolchain_bin/llvm-symbolizer
fi

log() { printf '\n==> %s\n' "$*"; }

# Builds Fuzz/<name> into $build_dir/<name>-fuzzer unless it is newer than all its sources: the
# code under test (sources.txt) as a module instrumented for coverage, the target's own files
# (entry point, properties) as a module that imports it, built with the address sanitizer only,
# so that libFuzzer is guided by the code under test alone.
build_target() {
    local name=$1 target_dir=$fuzz_dir/$1 binary=$build_dir/$1-fuzzer
    local objects=$build_dir/$1.objects module="" sources=() line
    while IFS= read -r line; do
        line=${line%%#*}
        read -r -a words <<<"$line" || true
        if [[ ${#words[@]} == 2 && ${words[0]} == module ]]; then
            module=${words[1]}
        elif [[ ${#words[@]} == 1 ]]; then
            sources+=("$repo/${words[0]}")
        elif [[ ${#words[@]} != 0 ]]; then
            echo "run.sh: cannot read this line of Fuzz/$name/sources.txt: $line" >&2
            return 1
        fi
    done <"$target_dir/sources.txt"
    if [[ -z $module || ${#sources[@]} == 0 ]]; then
        echo "run.sh: Fuzz/$name/sources.txt needs a \"module NAME\" line and at least one file" >&2
        return 1
    fi
    local harness=("$target_dir"/*.swift)
    if [[ -x $binary && -z ${FUZZ_REBUILD:-} ]] \
        && [[ -z $(find "${sources[@]}" "${harness[@]}" "$target_dir/sources.txt" "$0" -newer "$binary" 2>/dev/null) ]]; then
        log "$name: up to date: ${binary#"$repo"/}"
        return
    fi
    local linker=()
    [[ -x $toolchain_bin/ld.lld ]] && linker=(-use-ld=lld)  # the system's gold warns about sanitizer symbols
    log "$name: building ${binary#"$repo"/}: module $module (${#sources[@]} file(s), -sanitize=fuzzer,address -O)" \
        "and the target (${#harness[@]} file(s), -sanitize=address -O)"
    local started=$SECONDS
    rm -rf "$objects"
    mkdir -p "$objects"
    local common=(-parse-as-library -swift-version 6 -package-name RingPort -O -g -wmo)
    "$swiftc" -sanitize=fuzzer,address "${common[@]}" -module-name "$module" \
        -emit-module -emit-module-path "$objects/$module.swiftmodule" -c "${sources[@]}" -o "$objects/$module.o"
    "$swiftc" -sanitize=address "${common[@]}" -module-name "${name}Fuzz" -I "$objects" \
        -c "${harness[@]}" -o "$objects/${name}Fuzz.o"
    "$swiftc" -sanitize=fuzzer,address -g "${linker[@]}" "$objects/$module.o" "$objects/${name}Fuzz.o" -o "$binary.tmp"
    mv "$binary.tmp" "$binary"
    echo "built in $((SECONDS - started)) s"
}

# Runs Fuzz/<name> for $duration seconds; returns libFuzzer's exit status.
run_target() {
    local name=$1 target_dir=$fuzz_dir/$1 binary=$build_dir/$1-fuzzer
    local work=$work_dir/$name
    mkdir -p "$work/corpus" "$work/artifacts" "$work/logs"
    local seeds=0 file
    for file in "$target_dir"/corpus/* "$target_dir"/regressions/*; do
        [[ -f $file ]] || continue
        cp -f "$file" "$work/corpus/"
        seeds=$((seeds + 1))
    done
    local dict=() dict_file
    for dict_file in "$target_dir"/*.dict; do
        [[ -f $dict_file ]] && dict=("-dict=$dict_file")
    done
    local stamp=$work/logs/started-$$ log_file
    log_file=$work/logs/$(date +%Y%m%d-%H%M%S).log
    touch "$stamp"
    local started=$SECONDS
    log "$name: fuzzing for $duration s ($seeds committed inputs, working corpus $work/corpus, $(find "$work/corpus" -type f | wc -l) files; log $log_file)"
    local status=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is split on purpose
    "$binary" "$work/corpus" "${dict[@]}" \
        -max_total_time="$duration" -timeout=5 -rss_limit_mb=2048 \
        -artifact_prefix="$work/artifacts/" -print_final_stats=1 ${FUZZ_ARGS:-} \
        2>&1 | tee "$log_file" || status=${PIPESTATUS[0]}

    local done_line
    done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log_file" | tail -1 || true)
    echo
    echo "$name: $(stat_of number_of_executed_units) runs in $((SECONDS - started)) s," \
        "$(stat_of average_exec_per_sec) exec/s," \
        "coverage $(field_of 'cov: ([0-9]+)' "$done_line") of $(sed -nE 's/.*Loaded 1 PC tables \(([0-9]+) PCs\).*/\1/p' "$log_file" | head -1) instrumented PCs," \
        "$(field_of 'ft: ([0-9]+)' "$done_line") features," \
        "corpus $(field_of 'corp: ([0-9]+/[0-9]+[A-Za-z]*)' "$done_line")," \
        "$(stat_of new_units_added) new inputs, peak RSS $(stat_of peak_rss_mb) MB"

    if [[ $status != 0 ]]; then
        local artifact
        artifact=$(find "$work/artifacts" -type f -newer "$stamp" \
            \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' -o -name 'slow-unit-*' \) \
            -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
        echo
        echo "!!! $name FAILED (libFuzzer exit status $status); log: $log_file"
        if [[ -n $artifact ]]; then
            echo "!!! the input: $artifact ($(wc -c <"$artifact") bytes)"
            od -A d -t x1z -v "$artifact" | head -32
            echo "replay:   SWIFT_BACKTRACE=enable=no $binary $artifact"
            echo "minimize: SWIFT_BACKTRACE=enable=no $binary -minimize_crash=1 -max_total_time=60 -exact_artifact_path=$artifact.min $artifact"
            echo "keep it:  cp $artifact.min Fuzz/$name/regressions/<what-it-does>   (and add a test)"
            echo "A known bug that is not fixed yet can be overlooked meanwhile: see Fuzz/README.md."
        else
            echo "!!! no artifact was written under $work/artifacts/"
        fi
        rm -f "$stamp"
        return 1
    fi
    rm -f "$stamp"
    return 0
}

# stat_of <libFuzzer final stat name>: its value in the log of the run ("-" if none).
stat_of() {
    local value
    value=$(sed -nE "s/^stat::$1:[[:space:]]+([0-9]+).*/\\1/p" "$log_file" | tail -1)
    echo "${value:--}"
}

# field_of <regex with one group> <line>: the group ("-" if no match).
field_of() {
    local value
    value=$(sed -nE "s|.*$1.*|\\1|p" <<<"$2")
    echo "${value:--}"
}

mkdir -p "$work_dir"
targets=()
if [[ -n ${FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    for dir in "$fuzz_dir"/*/; do
        [[ -f $dir/sources.txt ]] && targets+=("$(basename "$dir")")
    done
fi
if [[ ${#targets[@]} == 0 ]]; then
    echo "run.sh: no fuzz targets under $fuzz_dir" >&2
    exit 2
fi

failed=()
for target in "${targets[@]}"; do
    if [[ ! -f $fuzz_dir/$target/sources.txt ]]; then
        echo "run.sh: no fuzz target $target (Fuzz/$target/sources.txt)" >&2
        exit 2
    fi
    build_target "$target" || { echo "run.sh: building $target failed" >&2; exit 2; }
done
for target in "${targets[@]}"; do
    run_target "$target" || failed+=("$target")
done

echo
if [[ ${#failed[@]} != 0 ]]; then
    echo "FUZZING FAILED: ${failed[*]} (see the inputs above)"
    exit 1
fi
echo "Fuzzing passed: ${targets[*]}, $duration s each. New inputs are in $work_dir/<target>/corpus;"
echo "to add the ones that reach new code to the committed corpus (then review, rename and git add them):"
for target in "${targets[@]}"; do
    echo "  SWIFT_BACKTRACE=enable=no $build_dir/$target-fuzzer -merge=1 Fuzz/$target/corpus $work_dir/$target/corpus"
done
