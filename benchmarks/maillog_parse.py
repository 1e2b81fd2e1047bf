"""Log line parser throughput: ``smtp_policy.maillog.parse.parse_line`` on the real sample mix.

Repeats the 3,000-line Postfix 3.7 sample (tests/samples) until there are ``--lines`` lines
(300,000 by default), parses them all in one process on one core, and prints lines/s for each
round (wall clock and process CPU time) plus the best round. Nothing is asserted: the machine is
shared and noisy, so read the best round and the CPU figure.

    .venv/bin/python benchmarks/maillog_parse.py [--lines 300000] [--rounds 5] [--log PATH]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from smtp_policy.maillog.parse import parse_line

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOG = ROOT / "tests" / "samples" / "postfix-3.7-maillog-sample.log"


def main() -> None:
    """Parse the repeated sample ``--rounds`` times and print the rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG)
    args = parser.parse_args()

    sample = args.log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    lines = (sample * (args.lines // len(sample) + 1))[: args.lines]
    kinds = Counter(r.kind if (r := parse_line(line)) else "none" for line in sample)
    print(f"{len(lines):,} lines from {args.log.name} ({len(sample):,} distinct)")
    print("mix:", ", ".join(f"{kind} {n}" for kind, n in kinds.most_common()))

    best_wall = best_cpu = 0.0
    for number in range(1, args.rounds + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        for line in lines:
            parse_line(line)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best_wall, best_cpu = max(best_wall, len(lines) / wall), max(best_cpu, len(lines) / cpu)
        print(
            f"round {number}: {len(lines) / wall:>10,.0f} lines/s wall"
            f"  {len(lines) / cpu:>10,.0f} lines/s cpu  ({wall * 1e6 / len(lines):.2f} us/line)"
        )
    print(f"best: {best_wall:,.0f} lines/s wall, {best_cpu:,.0f} lines/s cpu")


if __name__ == "__main__":
    main()
