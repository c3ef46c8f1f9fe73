#!/usr/bin/env python3
"""The soak (`make soak`): mixed load against `ringport echo` and `ringport http` for a while, then
the leak and error counts.

Both servers run as processes of their own on loopback ports the kernel picks. For the soak's
duration (SOAK_SECONDS, 300 by default), in rounds of ~30 s, at the same time:

  - echo:  `ringport load` (every echoed byte checked), the message size and the connection count
           changing every round (128 B x 200, 4 KiB x 64, 64 KiB x 16, 16 B x 1,000 at depth 4);
  - http:  wrk -t1 -c32 on GET /plaintext (non-2xx answers and socket errors counted);
  - churn: two client threads opening and closing connections to both servers the ways hostile
           or broken clients do: echo 1-8192 random bytes and check them, close at once, reset
           (SO_LINGER 0) in the middle of a 256 KiB write, half-close and read the rest, garbage
           and truncated HTTP, pipelined keep-alive requests.

Each round prints one line (rates, errors, each server's descriptors and resident memory). At the
end both servers get SIGTERM; the script prints, per server, the descriptors and resident memory
after the warm-up and after a settle period, and the shutdown summary, then the counts:

  leaks:  descriptors above the warmed-up count; resident memory more than 10% above it;
          completions lost (the summary's "lost");
  errors: echo messages corrupted or connections dropped, HTTP non-2xx or socket errors, churn
          mismatches or unexpected failures, server log lines at level error or critical.

Exit status 0 when every count is 0, 1 otherwise. Every client stops by itself (rounds are
bounded in time; sockets have timeouts).
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

ECHO_ROUNDS = [
    # (connections, size, depth)
    (200, 128, 1),
    (64, 4096, 1),
    (16, 65536, 1),
    (1000, 16, 4),
]


def log(line):
    print(line, flush=True)


class Server:
    """A ringport server process, its port, and its /proc readings."""

    def __init__(self, ringport, kind, extra):
        self.kind = kind
        self.log_path = f"/tmp/ringport-soak-{kind}-{os.getpid()}.log"
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [ringport, kind, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning", "--grace-period", "10"] + extra,
            stdout=subprocess.PIPE, stderr=self.log_file, text=True)
        line = self.process.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not match:
            raise SystemExit(f"soak: ringport {kind} did not start: {line!r}")
        self.port = int(match.group(1))
        self.output = []
        self.reader = threading.Thread(target=self._read_output, daemon=True)
        self.reader.start()

    def _read_output(self):
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))

    def descriptors(self):
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def resident_bytes(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def footprint(self):
        return self.descriptors(), self.resident_bytes()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=5)
        self.log_file.close()
        summary = next((line for line in self.output if line.startswith("stopped: ")), None)
        with open(self.log_path) as logged:
            errors = [line.rstrip("\n") for line in logged if " error " in line or " critical " in line]
        return self.process.returncode, summary, errors


def mib(value):
    return f"{value / (1 << 20):.1f}"


# ---------------------------------------------------------------------------------------------
# Churn: hostile and broken clients
# ---------------------------------------------------------------------------------------------

class Churn:
    def __init__(self, echo_port, http_port, seed):
        self.echo_port = echo_port
        self.http_port = http_port
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.cycles = 0
        self.mismatches = 0
        self.failures = []

    def connect(self, port):
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client

    @staticmethod
    def receive_exactly(client, count):
        chunks = []
        received = 0
        while received < count:
            chunk = client.recv(min(65536, count - received))
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
        return b"".join(chunks)

    @staticmethod
    def reset(client):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()

    def echo_check(self, rng):
        data = rng.randbytes(rng.randint(1, 8192))
        with self.connect(self.echo_port) as client:
            client.sendall(data)
            if self.receive_exactly(client, len(data)) != data:
                return "echo mismatch"
        return None

    def close_at_once(self, rng):
        self.connect(self.echo_port if rng.random() < 0.5 else self.http_port).close()
        return None

    def reset_mid_write(self, rng):
        client = self.connect(self.echo_port)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        client.setblocking(False)
        payload = rng.randbytes(256 * 1024)
        try:
            client.send(payload)
        except BlockingIOError:
            pass
        self.reset(client)
        return None

    def half_close(self, rng):
        data = rng.randbytes(rng.randint(1, 200_000))
        with self.connect(self.echo_port) as client:
            sender = threading.Thread(target=lambda: (client.sendall(data), client.shutdown(socket.SHUT_WR)))
            sender.start()
            echoed = self.receive_exactly(client, len(data) + 1)
            sender.join()
            if echoed != data:
                return f"half-close: {len(echoed)} of {len(data)} bytes echoed correctly" if echoed[: len(data)] == data[: len(echoed)] else "half-close mismatch"
        return None

    def garbage_http(self, rng):
        choice = rng.randint(0, 3)
        if choice == 0:
            request = rng.randbytes(rng.randint(1, 512))
        elif choice == 1:
            request = b"GET /plaintext HTTP/1.1\r\nHost: soak\r\n"[: rng.randint(1, 36)]
        elif choice == 2:
            request = b"GET /plaintext HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"
        else:
            request = b"BREW /pot HTCPCP/1.0\r\n\r\n"
        with self.connect(self.http_port) as client:
            client.settimeout(2)
            client.sendall(request)
            if choice == 1:
                # A truncated request: hang up without finishing it.
                return None
            try:
                answer = client.recv(4096)
            except (ConnectionResetError, socket.timeout):
                return None
            if answer and not answer.startswith(b"HTTP/1.1 4") and not answer.startswith(b"HTTP/1.1 5"):
                return f"garbage answered {answer[:40]!r}"
        return None

    def pipelined_http(self, rng):
        count = rng.randint(1, 8)
        with self.connect(self.http_port) as client:
            client.sendall(b"GET /plaintext HTTP/1.1\r\nHost: soak\r\n\r\n" * count)
            answers = b""
            while answers.count(b"Hello, World!") < count:
                chunk = client.recv(65536)
                if not chunk:
                    break
                answers += chunk
            if answers.count(b"HTTP/1.1 200 OK") != count or answers.count(b"Hello, World!") != count:
                return f"pipelined: {answers.count(b'HTTP/1.1 200 OK')} of {count} answered"
        return None

    def run(self, deadline, seed):
        rng = random.Random(seed)
        kinds = [self.echo_check, self.close_at_once, self.reset_mid_write, self.half_close, self.garbage_http, self.pipelined_http]
        while time.monotonic() < deadline:
            kind = rng.choice(kinds)
            try:
                problem = kind(rng)
            except (ConnectionResetError, BrokenPipeError) as error:
                problem = None if kind in (self.reset_mid_write, self.garbage_http) else f"{kind.__name__}: {error}"
            except OSError as error:
                problem = f"{kind.__name__}: {error}"
            with self.lock:
                self.cycles += 1
                if problem:
                    if "mismatch" in problem:
                        self.mismatches += 1
                    self.failures.append(problem)


# ---------------------------------------------------------------------------------------------

def run_echo_load(ringport, port, round_index, seconds):
    connections, size, depth = ECHO_ROUNDS[round_index % len(ECHO_ROUNDS)]
    command = [ringport, "load", "--port", str(port), "--connections", str(connections), "--size", str(size),
               "--depth", str(depth), "--duration", str(seconds), "--warmup", "0.5", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"label": f"{size} B x {connections}", "error": f"exit {done.returncode}: {done.stderr.strip()[-200:]}"}
    result["label"] = f"{size} B x {connections}" + (f" x depth {depth}" if depth > 1 else "")
    return result


def run_wrk(port, seconds):
    done = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "5s", f"http://127.0.0.1:{port}/plaintext"],
                          capture_output=True, text=True, timeout=seconds + 60)
    output = done.stdout
    requests = re.search(r"(\d+) requests in", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests": int(requests.group(1)) if requests else 0,
        "rate": float(rate.group(1)) if rate else 0.0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(value) for value in socket_errors.groups()) if socket_errors else 0,
        "failed": done.returncode != 0 or not requests,
    }


def fill_receive_buffers(echo_port, http_port, total=32 << 20):
    """Sends `total` bytes through one echo connection (reading them back) and as request bodies
    to the HTTP server, so that every provided receive buffer of both has been written once."""
    chunk = bytes(range(256)) * 4096  # 1 MiB
    with socket.create_connection(("127.0.0.1", echo_port), timeout=30) as client:
        for _ in range(total // len(chunk)):
            client.sendall(chunk)
            if Churn.receive_exactly(client, len(chunk)) != chunk:
                raise SystemExit("soak: the echo warm-up came back wrong")
    body = b"x" * 1_000_000
    with socket.create_connection(("127.0.0.1", http_port), timeout=30) as client:
        for _ in range(total // len(body)):
            client.sendall(b"POST /plaintext HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            answer = b""
            while b"\r\n\r\n" not in answer:
                data = client.recv(4096)
                if not data:
                    raise SystemExit("soak: the HTTP warm-up connection closed")
                answer += data
            length = re.search(rb"Content-Length: (\d+)", answer, re.I)
            head, _, rest = answer.partition(b"\r\n\r\n")
            missing = (int(length.group(1)) if length else 0) - len(rest)
            if missing > 0:
                Churn.receive_exactly(client, missing)


def settle(server, baseline, timeout=20):
    """Waits until the server is back to its warmed-up descriptors and within 10% of its memory."""
    deadline = time.monotonic() + timeout
    descriptors, resident = server.footprint()
    while time.monotonic() < deadline:
        descriptors, resident = server.footprint()
        if descriptors <= baseline[0] and resident <= baseline[1] * 1.1:
            break
        time.sleep(0.5)
    return descriptors, resident


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 300)))
    parser.add_argument("--round", type=float, default=30, help="seconds per round")
    parser.add_argument("--ringport", default=".build/release/ringport")
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()

    ringport = arguments.ringport
    echo = Server(ringport, "echo", ["--idle-timeout", "10"])
    http = Server(ringport, "http", ["--idle-timeout", "10"])
    servers = [echo, http]
    log(f"soak: {arguments.seconds:.0f} s of mixed load on ringport echo (port {echo.port}) and ringport http "
        f"(port {http.port}); rounds of {arguments.round:.0f} s")

    # Warm-up: every path once, so that pools and provided buffers are resident; then the baseline.
    # The kernel hands out the provided receive buffers in ring order and each becomes resident
    # the first time it is written: 32 MiB through each server touches all of them.
    fill_receive_buffers(echo.port, http.port)
    churn = Churn(echo.port, http.port, arguments.seed)
    warm = threading.Thread(target=churn.run, args=(time.monotonic() + 3, arguments.seed))
    warm.start()
    for index in range(len(ECHO_ROUNDS)):
        run_echo_load(ringport, echo.port, index, 1)
    run_wrk(http.port, 2)
    warm.join()
    time.sleep(3)
    baselines = {server.kind: server.footprint() for server in servers}
    for server in servers:
        descriptors, resident = baselines[server.kind]
        log(f"soak: {server.kind} warmed up: {descriptors} descriptors, {mib(resident)} MiB resident")
    warmup_failures = list(churn.failures)
    churn = Churn(echo.port, http.port, arguments.seed + 1)

    totals = {"echo_msgs": 0, "echo_errors": 0, "echo_failures": 0, "http_requests": 0, "http_non2xx": 0,
              "http_socket_errors": 0, "http_failures": 0}
    started = time.monotonic()
    end = started + arguments.seconds
    round_index = 0
    while time.monotonic() < end - 1:
        seconds = max(1, min(arguments.round, end - time.monotonic()))
        deadline = time.monotonic() + seconds
        churners = [threading.Thread(target=churn.run, args=(deadline, arguments.seed * 1000 + round_index * 10 + n)) for n in range(2)]
        for thread in churners:
            thread.start()
        echo_result = {}
        echo_thread = threading.Thread(target=lambda: echo_result.update(run_echo_load(ringport, echo.port, round_index, max(1, seconds - 1.5))))
        echo_thread.start()
        http_result = run_wrk(http.port, max(1, int(seconds - 1)))
        echo_thread.join()
        for thread in churners:
            thread.join()

        if "error" in echo_result:
            totals["echo_failures"] += 1
        totals["echo_msgs"] += int(echo_result.get("msgs", 0))
        totals["echo_errors"] += int(echo_result.get("errors", 0))
        totals["http_requests"] += http_result["requests"]
        totals["http_non2xx"] += http_result["non2xx"]
        totals["http_socket_errors"] += http_result["socket_errors"]
        totals["http_failures"] += 1 if http_result["failed"] else 0
        footprints = {server.kind: server.footprint() for server in servers}
        log(f"soak: round {round_index + 1} ({time.monotonic() - started:.0f} s): "
            f"echo {echo_result.get('label')} {float(echo_result.get('msgs/s', 0)):,.0f} msgs/s, {echo_result.get('errors', echo_result.get('error'))} errors; "
            f"http {http_result['rate']:,.0f} req/s, {http_result['non2xx']} non-2xx, {http_result['socket_errors']} socket errors; "
            f"churn {churn.cycles} cycles, {len(churn.failures)} failures; "
            + "; ".join(f"{kind} {d} fds {mib(r)} MiB" for kind, (d, r) in footprints.items()))
        round_index += 1

    # Settle, then stop.
    results = {}
    for server in servers:
        descriptors, resident = settle(server, baselines[server.kind])
        status, summary, errors = server.stop()
        results[server.kind] = (descriptors, resident, status, summary, errors)

    log("")
    log(f"soak: finished after {time.monotonic() - started:.0f} s of load, {round_index} rounds")
    leaks = 0
    errors_total = 0
    for server in servers:
        descriptors, resident = baselines[server.kind]
        end_descriptors, end_resident, status, summary, logged_errors = results[server.kind]
        lost = int(re.search(r"(\d+) lost", summary).group(1)) if summary and re.search(r"(\d+) lost", summary) else -1
        descriptor_leak = max(0, end_descriptors - descriptors)
        memory_growth = end_resident / resident - 1 if resident else 0
        memory_leak = 1 if memory_growth > 0.10 else 0
        lost_count = lost if lost > 0 else (1 if lost < 0 else 0)
        leaks += descriptor_leak + memory_leak + lost_count
        errors_total += len(logged_errors) + (0 if status == 0 else 1)
        log(f"soak: {server.kind}: descriptors {descriptors} -> {end_descriptors} ({descriptor_leak} leaked); "
            f"resident {mib(resident)} -> {mib(end_resident)} MiB ({memory_growth * 100:+.1f}%); "
            f"exit {status}; {len(logged_errors)} error log lines")
        log(f"soak: {server.kind}: {summary or 'no summary printed'}")
        for line in logged_errors[:5]:
            log(f"soak:   {line}")
    churn_failures = churn.failures + warmup_failures
    errors_total += totals["echo_errors"] + totals["echo_failures"] + totals["http_non2xx"] + totals["http_socket_errors"] \
        + totals["http_failures"] + len(churn_failures)
    log(f"soak: echo {totals['echo_msgs']:,} messages checked, {totals['echo_errors']} errors, {totals['echo_failures']} failed runs")
    log(f"soak: http {totals['http_requests']:,} requests, {totals['http_non2xx']} non-2xx, {totals['http_socket_errors']} socket errors, "
        f"{totals['http_failures']} failed runs")
    log(f"soak: churn {churn.cycles:,} connections, {churn.mismatches} mismatches, {len(churn_failures)} failures")
    for failure in churn_failures[:10]:
        log(f"soak:   {failure}")
    log(f"soak: {leaks} leaks, {errors_total} errors")
    return 0 if leaks == 0 and errors_total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
