# RingPort: the I/O completion port model on io_uring.
#
#   make run    installs what is missing, builds release, starts the echo server on 127.0.0.1:8888
#   make test   installs what is missing, builds, runs the tests (examples included) on each backend
#               (io_uring, then epoll), builds the docs, checks the formatting (make lint)
#   make lint        swift format lint (.swift-format: 120 columns) and no line over 120 characters
#   make format      formats the code with swift format
#   make stress      hostile and broken clients against the servers, on each backend (about a minute
#                    each after the build)
#   make sanitize    the tests under ThreadSanitizer and AddressSanitizer, on each backend
#   make fuzz        libFuzzer on the HTTP request parser, 60 s (FUZZ_SECONDS=...)
#   make docs        DocC documentation of RingPort, RingPortServer and RingPortAsync under
#                    .build/plugins/Swift-DocC/outputs/; fails on any DocC warning and on a
#                    public symbol without a doc comment
#   make soak        mixed echo + HTTP + churn load for 5 minutes (SOAK_SECONDS=...), then the
#                    leak and error counts
#   make bench       compares the echo server with C and SwiftNIO baselines under the same load
#   make bench-http  compares the HTTP responder with SwiftNIO's NIOHTTP1 under wrk
#   make bench-nio   the same SwiftNIO pipelines (HTTP, echo) on RingPortNIO and on NIOPosix
#   make bench-conns server memory per idle connection (10,000 connections)
#   make bench-micro micro benchmarks of the port and the server path (ordo-one/benchmark);
#                    bench-check compares them with the committed thresholds (0 mallocs, and the
#                    retains and releases, per operation)
#   make profile     where the echo server's CPU goes under load (perf cpu-clock): the user-space
#                    share and the top user-space symbols
#
# Both install liburing-dev (and pkg-config) with apt-get when pkg-config cannot find liburing.

SWIFT ?= swift
HOST ?= 127.0.0.1
PORT ?= 8888
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: all deps test-deps load-tools perf-tools build release run test lint format stress sanitize fuzz docs soak bench bench-deps bench-http bench-nio bench-conns bench-micro bench-check bench-thresholds profile clean

all: build

# liburing 2.3 from Debian (liburing-dev) and pkg-config, which SwiftPM uses to find it.
deps:
	@if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists liburing; then \
		echo "liburing not found by pkg-config: installing liburing-dev"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq liburing-dev pkg-config; \
	fi

# The tests also run a small python3 script (a seccomp filter that denies io_uring) and
# openssl (certificates for the TLS tests, and a TLS client).
test-deps: deps
	@if ! command -v python3 >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then \
		echo "python3 or openssl not found: installing them"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3 openssl; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product ringport

run: release
	@echo "Starting the echo server on $(HOST):$(PORT); talk to it with: nc $(HOST) $(PORT)  (Ctrl-C stops it)"
	.build/release/ringport echo --host $(HOST) --port $(PORT)

# The tests start the ringport executable, so build every product first.
# The tests build and run the examples too (Examples/, each against a real client); then the
# DocC catalogs must build without a warning (make docs).
# Every test runs once per backend (BACKENDS): RINGPORT_BACKEND makes each port the tests create,
# and each ringport process they start, use that backend unless the test pins one ("auto" is
# io_uring where the kernel allows it).
BACKENDS ?= auto epoll
test: test-deps build
	$(SWIFT) build --build-tests
	@set -e; for backend in $(BACKENDS); do \
		echo "== the tests on the $$backend backend: RINGPORT_BACKEND=$$backend $(SWIFT) test --skip-build --no-parallel"; \
		RINGPORT_BACKEND=$$backend $(SWIFT) test --skip-build --no-parallel; \
	done
	$(MAKE) --no-print-directory docs
	$(MAKE) --no-print-directory lint

# The formatting: swift format (the toolchain's; .swift-format at the root, 120 columns, as SwiftNIO
# does) on every Swift file, and no line longer than 120 characters (swift format wraps code but
# not string literals or comments).
FORMAT_PATHS = Sources Tests Examples Benchmarks/Sources Benchmarks/Benchmarks Fuzz/HTTPRequestParser/FuzzTarget.swift Package.swift Benchmarks/Package.swift
lint:
	$(SWIFT) format lint --strict --recursive --parallel $(FORMAT_PATHS)
	python3 Tests/Format/check-line-length.py 120

format:
	$(SWIFT) format format --in-place --recursive --parallel $(FORMAT_PATHS)

# Hostile and broken clients against ringport echo and http processes (StressTests.swift):
# 10,000 connect/close cycles, resets mid-write, half-close, slowloris, 1,000 clients that never
# read, a 64 MiB burst, garbage HTTP, connections past the limit; fds and RSS checked after each.
# STRESS_BUILD: the build directory (.ci/run reuses make test's .build instead of building again).
STRESS_BUILD ?= .build-stress
stress: test-deps
	$(SWIFT) build --build-tests --scratch-path $(STRESS_BUILD)
	@set -e; for backend in $(BACKENDS); do \
		echo "== the stress tests on the $$backend backend"; \
		RINGPORT_BACKEND=$$backend RINGPORT_STRESS=1 $(SWIFT) test --skip-build --no-parallel \
			--scratch-path $(STRESS_BUILD) --disable-xctest --filter StressTests; \
	done

# The test suite under ThreadSanitizer, then under AddressSanitizer (with LeakSanitizer), each in
# a build directory of its own. Only the Swift Testing runner runs (the XCTest runner has no tests).
# The suppression files (Tests/Sanitizers) say what each suppresses and why. Both builds leave out
# the TLS trait (NIOSSL and BoringSSL, about 2 more minutes per build): the TLS tests run in make
# test, and the channels they run on are the same as the plain ones, which run here.
# The suites that start ringport processes (the IntegrationTests target: about 80 s of the 280 s
# a sanitized run takes) run on the first backend only: on the others they run the same process
# code over an engine that the in-process suites already cover under each sanitizer.
SANITIZE_PROCESS_SUITES = IntegrationTests
# $(call sanitized-tests,Name,sanitizer,build directory,environment): the tests built under one
# sanitizer, run on each backend (the process suites on the first one only).
define sanitized-tests
	@set -e; first=1; for backend in $(BACKENDS); do \
		skip=$$([ $$first = 1 ] || echo "--skip $(SANITIZE_PROCESS_SUITES)"); first=0; \
		echo "== the tests under $(1) on the $$backend backend $$skip"; \
		RINGPORT_BACKEND=$$backend $(4) \
			$(SWIFT) test --skip-build --no-parallel --sanitize=$(2) --scratch-path $(3) --disable-xctest \
				--disable-default-traits $$skip; \
	done
endef
sanitize: test-deps
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build-tsan --disable-default-traits
	$(call sanitized-tests,ThreadSanitizer,thread,.build-tsan,TSAN_OPTIONS=suppressions=$(CURDIR)/Tests/Sanitizers/tsan-suppressions.txt)
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan --disable-default-traits
	$(call sanitized-tests,AddressSanitizer,address,.build-asan,LSAN_OPTIONS=suppressions=$(CURDIR)/Tests/Sanitizers/lsan-suppressions.txt)

# libFuzzer on the HTTP request parser (Fuzz/run.sh): builds into .build-fuzz/, runs each
# target FUZZ_SECONDS seconds with a working corpus under $TMPDIR; fails on a crash or a
# violated property, printing the input.
FUZZ_SECONDS ?= 60
fuzz:
	Fuzz/run.sh $(FUZZ_SECONDS)

# The documentation of the library modules: each module's catalog (Sources/<Module>/<Module>.docc)
# and doc comments, built by swift-docc-plugin into .build/plugins/Swift-DocC/outputs/<Module>.doccarchive
# (`swift package --disable-sandbox preview-documentation --target <Module>` serves one). Every
# DocC warning is an error: a symbol link that does not resolve, a bad topic reference, an
# undocumented parameter of a documented method. Then Tests/Docs/check-doc-comments.py fails on a
# public symbol without a doc comment of its own. The check is this target failing.
DOC_TARGETS ?= RingPort RingPortServer RingPortHTTP RingPortAsync RingPortNIO
docs: test-deps
	@set -e; for target in $(DOC_TARGETS); do \
		echo "$(SWIFT) package --disable-sandbox generate-documentation --target $$target --warnings-as-errors"; \
		$(SWIFT) package --disable-sandbox generate-documentation --target $$target --warnings-as-errors; \
	done
	python3 Tests/Docs/check-doc-comments.py $(DOC_TARGETS)

# Mixed load against ringport echo and ringport http processes (Tests/Soak/soak.py): ringport
# load with every echoed byte checked, wrk on GET /plaintext, and two threads of hostile and
# broken clients, in rounds of 30 s for SOAK_SECONDS; prints a line per round and, at the end,
# each server's descriptors and memory against its warmed-up start, its shutdown summary, and
# the leak and error counts (exit status 1 unless both are 0).
SOAK_SECONDS ?= 300
soak: release load-tools
	python3 Tests/Soak/soak.py --seconds $(SOAK_SECONDS) --ringport .build/release/ringport

# The baselines: C echo servers and load client of our own, and wrk. (The SwiftNIO baselines are
# `ringport nio-echo` and `ringport nio-http` with --transport posix, built by `release`.)
bench-deps: release load-tools
	Benchmarks/scripts/build-c.sh

# wrk and python3, for the soak and the benchmarks.
load-tools:
	@missing=""; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	if [ -n "$$missing" ]; then \
		echo "not found:$$missing: installing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# RingPort's echo server against C liburing, C epoll and SwiftNIO echo servers, same load,
# interleaved rounds (about 7 minutes on 2 cores, builds included). Writes the table and the
# chart to Benchmarks/results/latest.md and latest.svg.
bench: bench-deps perf-tools
	Benchmarks/scripts/bench-echo.sh

# RingPort's HTTP plaintext responder against SwiftNIO's NIOHTTP1 under wrk -t1 -c64 -d10s.
# Writes Benchmarks/results/latest-http.md and latest-http.svg.
bench-http: bench-deps
	Benchmarks/scripts/bench-http.sh --rounds 3 --duration 10 --connections 64

# The same SwiftNIO pipelines (NIOHTTP1 under wrk -t1 -c64; an echo handler under ringport
# load, 128 B x 64) on RingPortNIO and on NIOPosix, interleaved, 5 rounds of 10 s each (~4 min).
# Writes Benchmarks/results/latest-nio-http.md / .svg and latest-nio-echo.md / .svg.
bench-nio: release load-tools
	Benchmarks/scripts/bench-nio.sh

# Server memory per idle connection: 1,000 warm-up + 10,000 idle connections (each echoed once)
# against C liburing, C epoll, SwiftNIO and RingPort; 3 rounds, ~40 s.
bench-conns: release
	Benchmarks/scripts/build-c.sh
	Benchmarks/scripts/bench-conns.sh

# perf (Debian's linux-perf), for make profile and make bench's user-space share.
perf-tools:
	@if ! command -v perf >/dev/null 2>&1; then \
		echo "perf not found: installing linux-perf"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq linux-perf; \
	fi

# Where the echo server's CPU goes: 128-byte ping-pong over 64 connections (PROFILE_ARGS to change
# it, e.g. PROFILE_ARGS="--connections 1000 --rounds 5"), perf cpu-clock samples of the server in
# three rounds (~35 s); prints each round's user-space share and samples per 1,000 messages, the
# median round's kernel and user-space shares and its top user-space symbols.
PROFILE_ARGS ?=
profile: release perf-tools
	Benchmarks/scripts/profile.sh $(PROFILE_ARGS)

# Micro benchmarks of the raw port (post, NOP, echo round trips): wall clock and mallocs per
# operation. bench-check fails when a run is worse than Benchmarks/Thresholds (e.g. one malloc
# per operation more); bench-thresholds records new ones (on a quiet machine; review the diff).
bench-micro: deps
	cd Benchmarks && $(SWIFT) package benchmark --no-progress

bench-check: deps
	cd Benchmarks && $(SWIFT) package benchmark thresholds check --no-progress

bench-thresholds: deps
	cd Benchmarks && $(SWIFT) package --allow-writing-to-package-directory benchmark thresholds update --no-progress

# Every build directory: make test's, make stress's, the sanitizers', the fuzzer's, the benchmarks'.
clean:
	rm -rf .build .build-stress .build-tsan .build-asan .build-fuzz Benchmarks/.build Benchmarks/bin
