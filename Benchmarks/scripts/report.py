#!/usr/bin/env python3
"""report.py - turns the raw results of a benchmark run into a Markdown table and an SVG chart.

usage: report.py --kind echo|http --raw DIR --markdown FILE --chart FILE
                 [--subject ringport] [--command 'make bench'] [--title TEXT] [--client TEXT]
                 [--extra FILE]

--extra appends a Markdown file of more measurements (bench-echo.sh writes the spread of five
fresh 1,000-connection runs and the server's user-space share of CPU there).

DIR holds one sub-directory per load (grid point), each with the results.tsv that
compare-echo.sh or compare-http.sh wrote (--out) and a file `title` naming the load.  Loads are
reported in the order of their directory names (bench-echo.sh numbers them).

For each load and server: the medians over rounds of the rate (msgs/s or req/s), p99 latency
and server CPU per message or request; and, for every other server, the median over rounds of
the per-round ratio subject / that server (the runs of one round are back to back, so a ratio
within a round cancels most of the machine's drift).  A run that failed (NA) is left out of
both; the number of runs that counted is shown.

The chart has one panel per figure (rate, p99, CPU per message), one group of bars per load, one bar
per server, each relative to the first server of the load (1.0 = the reference).

Only the Python standard library is used.
"""

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
from html import escape

KINDS = {
    # rate column, its heading, p99 column, cpu column, cpu heading, unit of one operation
    "echo": ("msgs_per_s", "msgs/s", "p99_us", "cpu_us_per_msg", "CPU µs/msg", "msg"),
    "http": ("reqs_per_s", "req/s", "p99_us", "cpu_us_per_req", "CPU µs/req", "req"),
}

COLOURS = ["#8c8c8c", "#5b8fd9", "#e3a23b", "#2e9e5b", "#b5536b", "#7a5bc4"]


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_load(directory, kind):
    """Returns (title, servers in order, {server: {round: row}})."""
    rate_key, _, p99_key, cpu_key, _, _ = KINDS[kind]
    title_path = os.path.join(directory, "title")
    title = open(title_path).read().strip() if os.path.exists(title_path) else os.path.basename(directory)
    servers, runs = [], {}
    with open(os.path.join(directory, "results.tsv")) as tsv:
        for row in csv.DictReader(tsv, delimiter="\t"):
            server = row["server"]
            if server not in runs:
                servers.append(server)
                runs[server] = {}
            runs[server][row["round"]] = {
                "rate": number(row[rate_key]),
                "p99": number(row[p99_key]),
                "cpu": number(row[cpu_key]),
                "errors": number(row.get("errors")),
            }
    return title, servers, runs


def median_of(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio_medians(runs, subject, other, field):
    """Median over rounds of subject/other for `field`, rounds where both ran."""
    ratios = []
    for round_id, row in runs[subject].items():
        theirs = runs[other].get(round_id)
        if theirs and row[field] is not None and theirs[field]:
            ratios.append(row[field] / theirs[field])
    return median_of(ratios)


def summarize(directory, kind, subject):
    title, servers, runs = read_load(directory, kind)
    summary = []
    for server in servers:
        rows = runs[server].values()
        entry = {
            "server": server,
            "runs": sum(1 for r in rows if r["rate"] is not None),
            "rate": median_of(r["rate"] for r in rows),
            "p99": median_of(r["p99"] for r in rows),
            "cpu": median_of(r["cpu"] for r in rows),
            "errors": sum(int(r["errors"] or 0) for r in rows),
        }
        if subject in runs and server != subject:
            entry["rate_ratio"] = ratio_medians(runs, subject, server, "rate")
            entry["cpu_ratio"] = ratio_medians(runs, subject, server, "cpu")
        summary.append(entry)
    # Relative figures for the chart: per round, to the first server.
    reference = servers[0]
    for entry in summary:
        entry["rate_rel"] = ratio_medians(runs, entry["server"], reference, "rate")
        entry["p99_rel"] = ratio_medians(runs, entry["server"], reference, "p99")
        entry["cpu_rel"] = ratio_medians(runs, entry["server"], reference, "cpu")
    return title, summary


def fmt(value, pattern):
    return "NA" if value is None else pattern.format(value)


def markdown(loads, kind, subject, args):
    _, rate_heading, _, _, cpu_heading, unit = KINDS[kind]
    lines = [f"# {args.title}", ""]
    lines.append(f"Command: `{args.command}`  ")
    lines.append(f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ")
    lines.append(f"Machine: {machine()}" + ("  " if args.client else ""))
    if args.client:
        lines.append(f"Load client: {args.client}")
    lines.append("")
    lines.append(
        f"Medians over rounds. The last two columns are {subject} ÷ that server, as the median of "
        f"per-round ratios (servers run back to back in each round): above 1 means {subject} "
        f"does more {rate_heading}; below 1 means {subject} spends less server CPU per {unit}.")
    lines.append("")
    for title, summary in loads:
        lines.append(f"## {title}")
        lines.append("")
        lines.append(f"| Server | Runs | {rate_heading} | p99 µs | {cpu_heading} | Errors "
                     f"| {subject} ÷ server, {rate_heading} | {subject} ÷ server, CPU/{unit} |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for e in summary:
            name = f"**{e['server']}**" if e["server"] == subject else e["server"]
            rate_ratio = "—" if e["server"] == subject else fmt(e.get("rate_ratio"), "{:.3f}")
            cpu_ratio = "—" if e["server"] == subject else fmt(e.get("cpu_ratio"), "{:.3f}")
            lines.append(
                f"| {name} | {e['runs']} | {fmt(e['rate'], '{:,.0f}')} | {fmt(e['p99'], '{:.1f}')} "
                f"| {fmt(e['cpu'], '{:.3f}')} | {e['errors']} | {rate_ratio} | {cpu_ratio} |")
        lines.append("")
    if args.chart:
        lines.append(f"![{rate_heading}, p99 and CPU per {unit}, relative to the first server of each load]"
                     f"({os.path.basename(args.chart)})")
        lines.append("")
    return "\n".join(lines)


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu or platform.processor() or 'unknown'}), Linux {platform.release()}"


def chart(loads, kind):
    """An SVG with three panels of grouped horizontal bars: rate, p99 and CPU per op, each
    relative to the first server of the load."""
    _, rate_heading, _, _, _, unit = KINDS[kind]
    servers = []
    for _, summary in loads:
        for e in summary:
            if e["server"] not in servers:
                servers.append(e["server"])
    colour = {s: COLOURS[i % len(COLOURS)] for i, s in enumerate(servers)}
    bar, gap, label_width, plot_width, panel_gap = 14, 12, 250, 250, 40
    group_height = bar * len(servers) + gap
    panels = [("rate_rel", f"{rate_heading} (higher is better)"),
              ("p99_rel", "p99 latency (lower is better)"),
              ("cpu_rel", f"server CPU per {unit} (lower is better)")]
    panel_height = 30 + group_height * len(loads)
    legend_height = 24
    width = label_width + (plot_width + panel_gap) * len(panels) + 20
    height = legend_height + panel_height + 30
    maximum = {}
    for key, _ in panels:
        values = [e[key] for _, s in loads for e in s if e.get(key) is not None]
        maximum[key] = max([1.0] + values) * 1.15
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    x = label_width
    for server in servers:
        out.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{colour[server]}"/>')
        out.append(f'<text x="{x + 16}" y="16">{escape(server)}</text>')
        x += 20 + 7 * len(server) + 20
    for p, (key, heading) in enumerate(panels):
        left = label_width + p * (plot_width + panel_gap)
        top = legend_height + 20
        scale = plot_width / maximum[key]
        out.append(f'<text x="{left}" y="{top - 6}" font-weight="bold">{escape(heading)}</text>')
        one = left + scale
        out.append(f'<line x1="{one:.1f}" y1="{top}" x2="{one:.1f}" y2="{top + group_height * len(loads)}" '
                   f'stroke="#444" stroke-dasharray="3,3"/>')
        for g, (title, summary) in enumerate(loads):
            y = top + g * group_height
            if p == 0:
                out.append(f'<text x="{label_width - 8}" y="{y + group_height / 2:.1f}" '
                           f'text-anchor="end">{escape(title)}</text>')
            for i, e in enumerate(summary):
                value = e.get(key)
                by = y + i * bar
                if value is None:
                    out.append(f'<text x="{left + 4}" y="{by + bar - 3}">NA</text>')
                    continue
                w = value * scale
                out.append(f'<rect x="{left}" y="{by}" width="{w:.1f}" height="{bar - 2}" '
                           f'fill="{colour[e["server"]]}"/>')
                out.append(f'<text x="{left + w + 4:.1f}" y="{by + bar - 4}">{value:.2f}</text>')
    reference = loads[0][1][0]["server"]
    out.append(f'<text x="{label_width}" y="{height - 8}" fill="#444">Relative to {escape(reference)} '
               f'(= 1.00) within each load; medians of per-round ratios.</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--raw", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--chart")
    parser.add_argument("--subject", default="ringport")
    parser.add_argument("--command", default="make bench")
    parser.add_argument("--title", default="RingPort benchmark")
    parser.add_argument("--client", help="the load client, as the table should name it")
    parser.add_argument("--extra", help="a Markdown file to append after the tables")
    args = parser.parse_args()

    directories = sorted(d for d in (os.path.join(args.raw, n) for n in os.listdir(args.raw))
                         if os.path.isfile(os.path.join(d, "results.tsv")))
    if not directories:
        sys.exit(f"report.py: no results.tsv under {args.raw}")
    loads = [summarize(d, args.kind, args.subject) for d in directories]
    with open(args.markdown, "w") as f:
        f.write(markdown(loads, args.kind, args.subject, args))
        if args.extra and os.path.exists(args.extra):
            f.write("\n" + open(args.extra).read())
    if args.chart:
        with open(args.chart, "w") as f:
            f.write(chart(loads, args.kind))
    print(f"report.py: wrote {args.markdown}" + (f" and {args.chart}" if args.chart else ""))


if __name__ == "__main__":
    main()
