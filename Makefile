# RingPort: the I/O completion port model on io_uring.
#
#   make run    installs what is missing, builds release, starts the echo server on 127.0.0.1:8888
#   make test   installs what is missing, builds, runs the tests
#   make bench  compares the echo server with C baselines under the same load
#
# Both install liburing-dev (and pkg-config) with apt-get when pkg-config cannot find liburing.

SWIFT ?= swift
HOST ?= 127.0.0.1
PORT ?= 8888
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: all deps test-deps build release run test bench clean

all: build

# liburing 2.3 from Debian (liburing-dev) and pkg-config, which SwiftPM uses to find it.
deps:
	@if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists liburing; then \
		echo "liburing not found by pkg-config: installing liburing-dev"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq liburing-dev pkg-config; \
	fi

# The tests also run a small python3 script (a seccomp filter that denies io_uring).
test-deps: deps
	@if ! command -v python3 >/dev/null 2>&1; then \
		echo "python3 not found: installing it"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product ringport

run: release
	@echo "Starting the echo server on $(HOST):$(PORT); talk to it with: nc $(HOST) $(PORT)  (Ctrl-C stops it)"
	.build/release/ringport echo --host $(HOST) --port $(PORT)

# The tests start the ringport executable, so build every product first.
test: test-deps build
	$(SWIFT) test

# RingPort's echo server against C liburing and C epoll echo servers of our own, same load,
# interleaved rounds (about 4 minutes on 2 cores).
bench: release
	Benchmarks/scripts/bench-echo.sh

clean:
	rm -rf .build
