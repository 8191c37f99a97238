#!/usr/bin/env python3
"""Helpers for compare.sh: parse wrk output and print markdown tables.

  report.py parse-wrk FILE
      prints "requests rps p50_ms p99_ms errors" from a `wrk --latency` run
  report.py throughput TSV [RSS_TSV]
      TSV rows: name round requests rps p50_ms p99_ms errors cpu_us_per_req
                user_us_per_req system_us_per_req
      RSS_TSV rows: name peak_rss_kb
      prints one markdown table, medians over rounds, ratios against nginx; with more
      than one round, a line of CPU ratios against nginx round by round; when there
      are "relay" rows (a byte relay, the floor), a line of what each balancer costs above it
      ("uring-relay" rows, the same relay on io_uring, are a second floor)
  report.py idle TSV
      TSV rows: name conns rss_before_kb rss_after_kb
  report.py instructions TSV
      TSV rows: name requests instructions (callgrind's program total)
"""
import re
import statistics
import sys

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparseable wrk latency {text!r}")
    return float(m.group(1)) * UNITS_MS[m.group(2)]


def parse_wrk(path: str) -> None:
    text = open(path, encoding="utf-8", errors="replace").read()
    requests = int(re.search(r"^\s*(\d+) requests in", text, re.M).group(1))
    rps = float(re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M).group(1))
    p50 = to_ms(re.search(r"^\s*50%\s+(\S+)", text, re.M).group(1))
    p99 = to_ms(re.search(r"^\s*99%\s+(\S+)", text, re.M).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(g) for g in m.groups())
    print(requests, f"{rps:.1f}", f"{p50:.3f}", f"{p99:.3f}", errors)


def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def with_spread(v, spread):
    """A median with the range of the rounds behind it: "8.17 (8.01–8.40)"."""
    if v is None or spread is None:
        return fmt(v, 2)
    return f"{v:,.2f} ({spread[0]:,.2f}–{spread[1]:,.2f})"


def ratio(v, base):
    if v is None or not base:
        return "–"
    return f"{v / base:.2f}"


def read_rows(path):
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def throughput(path: str, rss_path: str | None) -> None:
    by_name: dict[str, list[list[str]]] = {}
    for row in read_rows(path):
        by_name.setdefault(row[0], []).append(row)
    rss = {}
    if rss_path:
        rss = {r[0]: int(r[1]) for r in read_rows(rss_path)}

    def vals(rows, col):
        return [float(r[col]) for r in rows if len(r) > col and r[col] != "-"]

    def med(rows, col):
        v = vals(rows, col)
        return statistics.median(v) if v else None

    def spread(rows, col):
        v = vals(rows, col)
        return (min(v), max(v)) if len(v) > 1 else None

    summary = {}
    for name, rows in by_name.items():
        summary[name] = {
            "rounds": len(rows),
            "rps": med(rows, 3),
            "p50": med(rows, 4),
            "p99": med(rows, 5),
            "errors": sum(int(r[6]) for r in rows),
            "cpu": med(rows, 7),
            "cpu_spread": spread(rows, 7),
            "user": med(rows, 8),
            "system": med(rows, 9),
        }
    base = summary.get("nginx", {})
    cols = ["balancer", "req/s", "req/s vs nginx", "CPU µs/req (min–max)", "CPU/req vs nginx",
            "user µs/req", "kernel µs/req", "p50 ms", "p99 ms", "errors"]
    if rss:
        cols.append("peak RSS MiB")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|")
    for name, s in summary.items():
        cells = [
            name,
            fmt(s["rps"], 0),
            ratio(s["rps"], base.get("rps")),
            with_spread(s["cpu"], s["cpu_spread"]),
            ratio(s["cpu"], base.get("cpu")),
            fmt(s["user"], 2),
            fmt(s["system"], 2),
            fmt(s["p50"], 3),
            fmt(s["p99"], 3),
            str(s["errors"]),
        ]
        if rss:
            cells.append(fmt(rss[name] / 1024, 1) if name in rss else "–")
        print("| " + " | ".join(cells) + " |")
    if "nginx" in by_name and len(by_name["nginx"]) > 1:
        paired_ratios(by_name)
    if "relay" in by_name:
        above_floor(by_name)


def cpu_by_round(rows) -> dict[str, float]:
    """CPU µs per request of each round that has one, by round: how rows of different
    balancers are paired."""
    return {r[1]: float(r[7]) for r in rows if r[7] != "-"}


def paired_ratios(by_name) -> None:
    """CPU per request against nginx's in the same round, round by round: the spread of
    the ratio itself, which the medians' ratio hides."""
    nginx = cpu_by_round(by_name["nginx"])
    parts = []
    for name, rows in by_name.items():
        if name in ("direct", "nginx"):
            continue
        ratios = [cpu / nginx[r] for r, cpu in cpu_by_round(rows).items() if nginx.get(r)]
        if ratios:
            listed = " ".join(f"{x:.2f}" for x in ratios)
            parts.append(f"{name} {listed} (median {statistics.median(ratios):.2f})")
    if not parts:
        return
    print()
    print("CPU per request against nginx's in the same round: " + "; ".join(parts) + ".")


def above_floor(by_name) -> None:
    """What each balancer costs above the byte relay measured in the same rounds: its HTTP
    work, without the kernel's TCP work that all of them pay alike. Per-round differences
    cancel the drift of a noisy machine between rounds better than a difference of medians."""
    floor = cpu_by_round(by_name["relay"])
    above = {}
    for name, rows in by_name.items():
        if name in ("direct", "relay", "uring-relay"):
            continue
        diffs = [cpu - floor[r] for r, cpu in cpu_by_round(rows).items() if r in floor]
        if diffs:
            above[name] = (statistics.median(diffs), min(diffs), max(diffs))
    base = above.get("nginx")
    parts = []
    for name, (m, lo, hi) in above.items():
        part = f"{name} {m:.2f} µs ({lo:.2f}–{hi:.2f})"
        if base and name != "nginx" and base[0] > 0:
            part += f", {m / base[0]:.2f}x nginx"
        parts.append(part)
    if not parts:
        return
    print()
    print("CPU µs per request above the relay (per-round differences, median and range): "
          + "; ".join(parts) + ".")


def idle(path: str) -> None:
    print("| balancer | idle conns | RSS before MiB | RSS after MiB | bytes per idle conn |")
    print("|---|---:|---:|---:|---:|")
    for name, conns, before, after in read_rows(path):
        per_conn = (int(after) - int(before)) * 1024 / int(conns)
        print(f"| {name} | {int(conns):,} | {int(before) / 1024:.1f} | {int(after) / 1024:.1f} "
              f"| {per_conn:,.0f} |")


def instructions(path: str) -> None:
    rows = {name: (int(requests), int(total)) for name, requests, total in read_rows(path)}
    base = rows.get("nginx")
    base_per = base[1] / base[0] if base and base[0] else None
    print("| balancer | requests | user-space instructions | per request | vs nginx |")
    print("|---|---:|---:|---:|---:|")
    for name, (requests, total) in rows.items():
        per = total / requests if requests else None
        print(f"| {name} | {requests:,} | {total:,} | {fmt(per, 0)} | {ratio(per, base_per)} |")


def main() -> None:
    cmd, *args = sys.argv[1:]
    if cmd == "parse-wrk":
        parse_wrk(args[0])
    elif cmd == "throughput":
        throughput(args[0], args[1] if len(args) > 1 else None)
    elif cmd == "idle":
        idle(args[0])
    elif cmd == "instructions":
        instructions(args[0])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
