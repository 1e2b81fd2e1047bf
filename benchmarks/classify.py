"""Classification throughput: smtp_policy against sisimai (Debian's libsisimai-perl).

Builds >= 10,000 varied, real-looking replies from the labelled corpus and the knowledge base's
own samples (addresses, hosts, IPs and queue ids varied per copy), then times, on the same
strings in the same run: smtp_policy's parse + classify, the full explain, the whole
``smtp-policy explain --jsonl`` process (start-up, knowledge loading and JSON output included)
and ``Sisimai::Reason->match`` (timed inside Perl, start-up excluded: the comparison favours
sisimai). Prints replies/s, the ratios and per-call latency percentiles; the process and
sisimai also per second of the CPU time they used, which a loaded machine disturbs less than
the wall clock. Nothing is asserted: the machine is shared and noisy. The process's start
alone (an empty input) is timed too: it bounds what any per-reply speed-up can give. The
processes keep a bytecode cache, as an installed package does. ``--save FILE`` also writes the
replies as JSON Lines, the input to compare ``explain --jsonl`` outputs byte for byte before
and after a change. ``--mypyc`` also times the process from a copy whose classification
modules mypyc compiled (``benchmarks/_builds.py``), after checking its output is the pure
package's.

    .venv/bin/python benchmarks/classify.py [--count 20000] [--rounds 3] [--save FILE] [--mypyc]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make benchmarks._builds importable
    sys.path.insert(0, str(ROOT))

from benchmarks._builds import EXPLAIN_MODULES, compiled_copy, with_bytecode  # noqa: E402
from smtp_policy.core.classify import classify  # noqa: E402
from smtp_policy.core.explain import explain_text, forget_explanations  # noqa: E402
from smtp_policy.core.parse import parse_reply  # noqa: E402
from smtp_policy.data import default_knowledge  # noqa: E402

# The Perl side: read the same replies, time Reason->match over them in-process.
PERL = r"""
use strict; use warnings; use JSON::PP; use Time::HiRes qw(time); use Sisimai::Reason;
my @r; open(my $fh, '<:raw', $ARGV[0]) or die; while (<$fh>) { push @r, decode_json($_) }
my $rounds = $ARGV[1]; my (@rates, @cpu_rates);
for (1..$rounds) {
    my $t = time; my ($u, $s) = times;
    Sisimai::Reason->match($_) for @r;
    push @rates, scalar(@r) / (time - $t);
    my ($u2, $s2) = times; push @cpu_rates, scalar(@r) / (($u2 + $s2 - $u - $s) || 0.01);
}
print join(" ", @rates), "\n", join(" ", @cpu_rates), "\n";
"""


def build_replies(count: int, seed: int = 42) -> list[str]:
    """Vary the seed replies until there are ``count`` of them."""
    kb = default_knowledge()
    base: list[str] = []
    corpus = ROOT / "tests" / "corpus" / "replies.jsonl"
    if corpus.exists():
        base += [json.loads(line)["reply"] for line in corpus.read_text().splitlines() if line]
    base += [s for rule in kb.rules for s in rule.samples]
    base += [s for info in kb.basic.values() for s in info.samples]
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        out.append(_vary(rng.choice(base), rng))
    return out


_ADDR = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_IP = re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")


def _vary(text: str, rng: random.Random) -> str:
    user = "".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(3, 10)))
    text = _ADDR.sub(f"{user}@example{rng.randint(1, 999)}.com", text)
    return _IP.sub(f"192.0.2.{rng.randint(1, 254)}", text)


def time_python(replies: list[str], rounds: int) -> tuple[list[float], list[float]]:
    """Replies/s for parse+classify and for the full explain, per round."""
    kb = default_knowledge()
    classify_rates, explain_rates = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        for text in replies:
            classify(parse_reply(text, kb.codebook), kb)
        classify_rates.append(len(replies) / (time.perf_counter() - t))
        forget_explanations()  # each round starts cold: a repeated text is a hit, as in a stream
        t = time.perf_counter()
        for text in replies:
            explain_text(text, kb)
        explain_rates.append(len(replies) / (time.perf_counter() - t))
    return classify_rates, explain_rates


def latency_us(replies: list[str]) -> tuple[float, float]:
    """p50 and p99 of one parse+classify, in microseconds."""
    kb = default_knowledge()
    samples = []
    for text in replies[:5000]:
        t = time.perf_counter_ns()
        classify(parse_reply(text, kb.codebook), kb)
        samples.append((time.perf_counter_ns() - t) / 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def time_command(
    replies: list[str], rounds: int, env: dict[str, str] | None = None
) -> tuple[list[float], list[float]]:
    """Seconds of a whole ``smtp-policy explain --jsonl`` process per round, start included:
    of wall-clock time, and of the CPU time the process used (user and system; steadier than
    the wall clock on a loaded machine)."""
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "replies.jsonl"
        data.write_text(_jsonl(replies))
        command = [sys.executable, "-m", "smtp_policy", "explain", "--jsonl", str(data)]
        env = with_bytecode(Path(tmp) / "bytecode", env)
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True, cwd=ROOT, env=env)  # warm
        for _ in range(rounds):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, check=True, cwd=ROOT, env=env)
            walls.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def _jsonl(replies: list[str]) -> str:
    """The replies as ``explain --jsonl`` reads them: one JSON string a line."""
    return "".join(json.dumps(r) + "\n" for r in replies)


def per_second(count: int, seconds: list[float]) -> list[float]:
    """``count`` items per each of ``seconds``."""
    return [count / max(s, 1e-3) for s in seconds]


def explained(replies: list[str], env: dict[str, str] | None) -> bytes:
    """What ``explain --jsonl`` writes for the replies."""
    data = _jsonl(replies).encode()
    command = [sys.executable, "-m", "smtp_policy", "explain", "--jsonl", "-"]
    return subprocess.run(command, input=data, capture_output=True, check=True, env=env).stdout


def time_sisimai(replies: list[str], rounds: int) -> tuple[list[float], list[float]] | None:
    """Replies/s of Sisimai::Reason->match per round, per second of wall-clock time and per
    second of CPU time (Perl's ``times``), or None without perl/sisimai."""
    if shutil.which("perl") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "replies.jsonl"
        data.write_text(_jsonl(replies))
        script = Path(tmp) / "bench.pl"
        script.write_text(PERL)
        proc = subprocess.run(
            ["perl", str(script), str(data), str(rounds)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(f"sisimai not available: {proc.stderr.strip()[:200]}")
            return None
        wall, cpu = proc.stdout.splitlines()[:2]
        return [float(x) for x in wall.split()], [float(x) for x in cpu.split()]


def _rounds(rates: list[float]) -> str:
    return "rounds: " + ", ".join(f"{r:,.0f}" for r in rates)


def main() -> None:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--save", type=Path, metavar="FILE", help="write the replies as JSON Lines")
    parser.add_argument(
        "--mypyc",
        action="store_true",
        help="also time explain --jsonl from a copy whose classification mypyc compiled",
    )
    args = parser.parse_args()
    replies = build_replies(args.count)
    if args.save is not None:
        args.save.write_text(_jsonl(replies))
    mean = statistics.mean(map(len, replies))
    print(f"{len(replies)} replies, {len(set(replies))} distinct, mean {mean:.0f} chars")
    default_knowledge()  # loading is not part of the timing
    sisimai = time_sisimai(replies, args.rounds)
    sis, sis_cpu = sisimai if sisimai is not None else (None, None)
    cls, exp = time_python(replies, args.rounds)
    walls, cpus = time_command(replies, args.rounds)
    cmd, cmd_cpu = per_second(len(replies), walls), per_second(len(replies), cpus)
    start_wall, start_cpu = time_command([], args.rounds)
    p50, p99 = latency_us(replies)
    ours = statistics.median(cls)
    print(f"smtp_policy parse+classify: {ours:,.0f} replies/s ({_rounds(cls)})")
    print(f"smtp_policy explain:        {statistics.median(exp):,.0f} replies/s ({_rounds(exp)})")
    print(f"explain --jsonl (process):  {statistics.median(cmd):,.0f} replies/s ({_rounds(cmd)})")
    print(f"  per CPU-second:           {statistics.median(cmd_cpu):,.0f} ({_rounds(cmd_cpu)})")
    print(
        f"  start alone (no input):   {statistics.median(start_wall):.3f} s, "
        f"{statistics.median(start_cpu):.3f} s CPU"
    )
    print(f"latency parse+classify:     p50 {p50:.1f} us, p99 {p99:.1f} us")
    if args.mypyc:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "PYTHONPATH": str(compiled_copy(EXPLAIN_MODULES, Path(tmp)))}
            if explained(replies, env) != explained(replies, None):
                sys.exit("--mypyc: the compiled copy's explanations differ from the pure package's")
            print("mypyc: the compiled copy's output is the pure package's, byte for byte")
            walls, cpus = time_command(replies, args.rounds, env)
        compiled = per_second(len(replies), walls)
        compiled_cpu = per_second(len(replies), cpus)
        print(
            f"explain --jsonl (mypyc):    {statistics.median(compiled):,.0f} replies/s "
            f"({_rounds(compiled)})"
        )
        print(f"  per CPU-second:           {statistics.median(compiled_cpu):,.0f}")
    if sis and sis_cpu:
        theirs = statistics.median(sis)
        print(f"sisimai Reason->match:      {theirs:,.0f} replies/s ({_rounds(sis)})")
        print(
            f"ratio smtp_policy/sisimai:  {ours / theirs:.1f}x parse+classify, "
            f"{statistics.median(exp) / theirs:.1f}x full explain, "
            f"{statistics.median(cmd) / theirs:.1f}x explain --jsonl process"
        )
        theirs_cpu = statistics.median(sis_cpu)
        print(f"  sisimai per CPU-second:   {theirs_cpu:,.0f} ({_rounds(sis_cpu)})")
        print(
            f"ratio per CPU-second:       "
            f"{statistics.median(cmd_cpu) / theirs_cpu:.1f}x explain --jsonl process"
        )


if __name__ == "__main__":
    main()
