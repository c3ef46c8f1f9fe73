#!/usr/bin/env python3
"""Tests/Format/check-line-length.py [LIMIT] — lists the lines of the tracked Swift files longer than
LIMIT characters (default 120, the .swift-format line length) and exits 1 if there are any.

`swift format` wraps code but cannot wrap a string literal or a comment, so `swift format lint`
alone lets those grow past the limit; `make lint` runs both."""
import subprocess
import sys

limit = int(sys.argv[1]) if len(sys.argv) > 1 else 120
files = subprocess.check_output(["git", "ls-files", "*.swift"], text=True).split()
long_lines = []
for path in files:
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            length = len(line.rstrip("\n"))
            if length > limit:
                long_lines.append(f"{path}:{number}: {length} characters")
for entry in long_lines:
    print(entry)
if long_lines:
    print(f"check-line-length: {len(long_lines)} lines over {limit} characters", file=sys.stderr)
    sys.exit(1)
