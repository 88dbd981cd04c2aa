#!/usr/bin/env python3
"""The median of several runs of scripts/bench.sh (their --json files), figure by figure,
beside each run's value and the target where there is one.

    scripts/bench-median.py RUN1.json RUN2.json RUN3.json

BENCHMARKS.md reports these medians: one run on a shared machine is not a measurement.
"""
import json
import statistics
import sys

# (label, path in the JSON, target, whether lower is better)
FIGURES = [
    ("twofold / google-authenticator overhead, 1 login at a time (N=100)",
     ("ratio_overhead_vs_google_authenticator",), 0.25, True),
    ("same, 8 concurrent logins", ("ratio_overhead_vs_google_authenticator_8",), 0.12, True),
    ("twofold / pam_oath overhead (N=100)", ("ratio_overhead_vs_pam_oath",), None, True),
    ("overhead at 100,000 / at 100 users", ("scale_ratio_100k_vs_100",), 1.2, True),
    ("overhead, 5 authenticators / 1", ("authenticators_5", "ratio_overhead_vs_1"), 1.10, True),
    ("durable verifications/s, 32 clients", ("daemon_durable_verifications_per_s",), 10000, False),
    ("flood p99 / p99 without", ("flood_p99_ratio",), 2.0, True),
    ("twofoldd RSS at 100,000 users (MiB)", ("daemon_rss_mib_100k",), None, True),
    ("floor: fsync p50 (ms)", ("floor", "fsync_ms"), None, True),
    ("floor: round trip p50 (ms)", ("floor", "round_trip_ms"), None, True),
    ("floor: module load (ms)", ("floor", "module_load_ms"), 0.03, True),
    ("floor (ms)", ("floor_ms",), None, True),
    ("twofold's overhead / floor", ("overhead_over_floor",), 1.3, True),
    ("PostgreSQL: verifications/s over two daemons",
     ("postgres", "daemon_durable_verifications_per_s_two_daemons"), 5000, False),
    ("pam_twofold.so (bytes)", ("so_size_bytes",), 300_000, True),
]


def get(run, path):
    for key in path:
        if not isinstance(run, dict) or key not in run:
            return None
        run = run[key]
    return run if isinstance(run, (int, float)) else None


def fmt(v):
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def main(paths):
    if len(paths) < 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    runs = [json.load(open(p)) for p in paths]
    print(f"{'figure':<68}" + "".join(f"{'run ' + str(i + 1):>10}" for i in range(len(runs)))
          + f"{'median':>10}{'target':>10}  ")
    for label, path, target, lower in FIGURES:
        values = [get(r, path) for r in runs]
        present = [v for v in values if v is not None]
        if not present:
            continue
        median = statistics.median(present)
        verdict = ""
        if target is not None:
            met = median <= target if lower else median >= target
            verdict = "met" if met else "MISSED"
        cells = "".join(f"{fmt(v) if v is not None else '-':>10}" for v in values)
        shown = fmt(target) if target is not None else "-"
        print(f"{label:<68}{cells}{fmt(median):>10}{shown:>10}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
