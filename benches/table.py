#!/usr/bin/env python3
"""Prints the `cargo bench --bench select` results as a markdown table (median ns per pick).

Usage: cargo bench --bench select && python3 benches/table.py
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
ALGORITHMS = ["round_robin", "least_connections", "least_request", "peak_ewma", "random", "maglev", "ring_hash"]
SIZES = [2, 10, 100, 1000]


def median_ns(group, algorithm, size):
    path = ROOT / group / algorithm / str(size) / "new" / "estimates.json"
    try:
        return json.loads(path.read_text())["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None


def fmt(ns):
    if ns is None:
        return "–"
    return f"{ns:,.0f}" if ns >= 100 else f"{ns:.1f}"


def main():
    if not ROOT.exists():
        sys.exit(f"no results under {ROOT}: run `cargo bench --bench select` first")
    header = "| algorithm | " + " | ".join(f"{n} backends" for n in SIZES)
    header += " | " + " | ".join(f"{n}, 2 threads" for n in SIZES) + " |"
    print(header)
    print("|---|" + "---:|" * (2 * len(SIZES)))
    for a in ALGORITHMS:
        cells = [fmt(median_ns("pick", a, n)) for n in SIZES]
        cells += [fmt(median_ns("pick_contended", a, n)) for n in SIZES]
        print(f"| `{a}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
