"""Log throughput: ``smtp-policy follow`` and ``smtp-policy report`` against pflogsumm.

Generates a realistic Postfix log (deterministic, seeded) by replaying the shapes of the
3,000-line Postfix 3.7 sample (tests/samples) over and over with new queue ids, message ids,
addresses, recipient domains, process ids and times, so that every copy is a consistent set of
messages; the messages a copy leaves deferred are retried, delivered and removed at the start of
the next one, as a real queue would (so the follower's memory stays flat).
Then times, in alternating rounds on the same file, ``smtp-policy follow --from-start --once
--events FILE`` (a child process; its peak RSS from ``wait4``; events to /dev/null, or to a real
file with ``--events-file``), ``smtp-policy report`` and ``pflogsumm`` (Debian's
/usr/sbin/pflogsumm), reports to /dev/null. Prints lines/s for each, both ratios against
pflogsumm (median of the rounds), the same per CPU second (user + system time of each child,
from ``wait4``: less sensitive to other work on a shared machine), and peak RSS. Nothing is
asserted: the machine is shared and noisy. The children keep a bytecode cache, as an installed
package does (written by a warm-up run of each on the log's first 1,000 lines). ``--mypyc``
also times both commands from a copy whose log path is compiled by mypyc
(``benchmarks/_builds.py``), after checking that the copy's report is byte for byte the pure
package's.

    .venv/bin/python benchmarks/follow.py [--lines 1000000] [--rounds 3] [--keep DIR] [--mypyc]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make benchmarks._builds importable
    sys.path.insert(0, str(ROOT))

from benchmarks._builds import LOG_MODULES, compiled_copy, with_bytecode  # noqa: E402

SAMPLE = ROOT / "tests" / "samples" / "postfix-3.7-maillog-sample.log"
PFLOGSUMM = shutil.which("pflogsumm") or "/usr/sbin/pflogsumm"

_STAMP = re.compile(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d) ")
_QID = re.compile(r"\b[0-9A-F]{10}\b")
_PID = re.compile(r"\[(\d+)\]: ")
_LOCAL = re.compile(r"\b(user|sender|nosuchuser|defer|bounce|full|spam|big|policy)(\d+)@")
_DOMAIN = re.compile(r"@remote\.test\b")
_HELO = re.compile(r"client(\d+)\.example\.net")
_REMOTE_ID = re.compile(r"queued as \w+")
_DOMAINS = (
    "remote.test",
    "example.com",
    "example.org",
    "mail.example.net",
    "corp.example",
    "gmail.example",
    "outlook.example",
    "yahoo.example",
)


def generate(lines: int, out: Path, seed: int = 42) -> int:
    """Write ``lines`` lines to ``out``; return the number written."""
    sample = SAMPLE.read_text(encoding="utf-8").splitlines()
    rng = random.Random(seed)
    start = datetime(2026, 11, 28, 0, 0, 0)
    written = 0
    with open(out, "w", encoding="utf-8") as fh:
        for copy in _copies(sample, rng, start):
            for line in copy:
                fh.write(line + "\n")
                written += 1
                if written >= lines:
                    return written
    return written


class _Copy:
    """How one copy of the sample differs from the others."""

    def __init__(self, n: int, rng: random.Random, counter: int) -> None:
        self.rng = rng
        self.counter = counter
        self.qids: dict[str, str] = {}
        self.domain = rng.choice(_DOMAINS)
        self.pid_shift = rng.randint(0, 40000)
        self.user_shift = n * 10_000
        self.helo_shift = rng.randint(0, 500)

    def vary(self, body: str) -> str:
        """The line body with this copy's queue ids, pids, addresses and names."""
        body = _QID.sub(self._qid, body)
        body = _PID.sub(self._pid, body, count=1)
        body = _LOCAL.sub(self._local, body)
        body = _DOMAIN.sub(f"@{self.domain}", body)
        body = _HELO.sub(self._helo, body)
        return _REMOTE_ID.sub(self._remote_id, body)

    def _qid(self, m: re.Match[str]) -> str:
        if m.group(0) not in self.qids:
            self.counter += self.rng.randint(1, 64)
            self.qids[m.group(0)] = f"{self.counter:010X}"
        return self.qids[m.group(0)]

    def _pid(self, m: re.Match[str]) -> str:
        return f"[{int(m.group(1)) + self.pid_shift}]: "

    def _local(self, m: re.Match[str]) -> str:
        return f"{m.group(1)}{int(m.group(2)) + self.user_shift}@"

    def _helo(self, m: re.Match[str]) -> str:
        return f"client{int(m.group(1)) + self.helo_shift}.example.net"

    def _remote_id(self, m: re.Match[str]) -> str:
        return "queued as " + "".join(
            self.rng.choice("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(12)
        )


def _copies(sample: list[str], rng: random.Random, start: datetime) -> Iterator[list[str]]:
    """Endless copies of the sample; each starts with the retries of the last one's deferrals."""
    first = _time(sample[0])
    offsets = [_time(line) - first for line in sample]
    bodies = [_STAMP.sub("", line, count=1) for line in sample]
    retried = _still_queued(bodies)
    counter = 0x36B0000000
    when = start
    previous: _Copy | None = None
    n = 0
    while True:
        n += 1
        variation = _Copy(n, rng, counter)
        stamps = {o: (when + o).strftime("%b %d %H:%M:%S") for o in set(offsets)}
        lines = [f"{stamps[o]} {variation.vary(b)}" for o, b in zip(offsets, bodies, strict=True)]
        if previous is not None:
            retry = [f"{stamps[offsets[0]]} {_delivered(previous.vary(b))}" for b in retried]
            lines = retry + lines
        yield lines
        counter = variation.counter
        previous = variation
        when += offsets[-1] + timedelta(seconds=rng.randint(1, 30))


def _still_queued(bodies: list[str]) -> list[str]:
    """For messages the sample leaves deferred: qmgr's line, their deferrals, a "removed"."""
    removed = {m[1] for b in bodies if (m := re.search(r": ([0-9A-F]{10}): removed$", b))}
    deferred = [b for b in bodies if "status=deferred" in b]
    queued = {q[0] for b in deferred if (q := _QID.search(b))} - removed
    out: list[str] = []
    for qid in sorted(queued):
        active = next(b for b in bodies if f"{qid}: from=<" in b)
        out.append(active)
        out += [b for b in deferred if f"{qid}: to=<" in b]
        out.append(active.split(": from=<")[0] + ": removed")
    return out


_DEFERRAL = re.compile(
    r"relay=[^,]+, delay=[\d.]+, delays=[\d./]+, dsn=4\.\d+\.\d+, status=deferred .*"
)


def _delivered(body: str) -> str:
    """A deferral line turned into the later retry's success."""
    return _DEFERRAL.sub(
        "relay=127.0.0.1[127.0.0.1]:2525, delay=45, delays=44.9/0/0/0.05, dsn=2.0.0, "
        "status=sent (250 2.0.0 Ok: queued as 4XZR7Q9PLM2K)",
        body,
    )


def _time(line: str) -> datetime:
    m = _STAMP.match(line)
    return (
        datetime.strptime(f"2026 {m.group(1)}", "%Y %b %d %H:%M:%S") if m else datetime(2026, 1, 1)
    )


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int, float]:
    """Wall seconds, exit status, peak RSS (KiB) and CPU seconds (user + system) of one child
    process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        print(f"  {cmd[0]} exited {proc.returncode}: {err.strip()[:300]}", file=sys.stderr)
    if proc.stderr:
        proc.stderr.close()
    return elapsed, proc.returncode, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def main() -> None:
    """Generate the log, time both tools in alternating rounds, print the numbers."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", type=Path, help="write the log here instead of a temp dir")
    parser.add_argument(
        "--events-file",
        action="store_true",
        help="follow writes its events to a file, not /dev/null",
    )
    parser.add_argument(
        "--mypyc",
        action="store_true",
        help="also time follow and report from a copy whose log path mypyc compiled",
    )
    args = parser.parse_args()
    if not SAMPLE.exists():
        sys.exit(f"the shared sample is missing: {SAMPLE}")
    with tempfile.TemporaryDirectory() as tmp:
        log = (args.keep or Path(tmp)) / f"maillog-{args.lines}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        n = generate(args.lines, log, args.seed)
        size = log.stat().st_size / 1e6
        print(f"generated {n:,} lines ({size:.0f} MB) in {time.perf_counter() - t:.1f} s: {log}")
        events = str(log.parent / "events.jsonl") if args.events_file else os.devnull
        ours = [sys.executable, "-m", "smtp_policy"]
        follow = [*ours, "follow", "--log", str(log), "--from-start", "--once", "--events", events]
        pure = with_bytecode(Path(tmp) / "bytecode")
        runs: dict[str, tuple[list[str], dict[str, str] | None]] = {
            "follow": (follow, pure),
            "report": ([*ours, "report", str(log)], pure),
        }
        if args.mypyc:
            copy = compiled_copy(LOG_MODULES, Path(tmp) / "mypyc")
            env = with_bytecode(Path(tmp) / "bytecode-mypyc", {**pure, "PYTHONPATH": str(copy)})
            _same_report(ours, log, env)
            runs["follow-mypyc"] = (follow, env)
            runs["report-mypyc"] = (runs["report"][0], env)
        if os.path.exists(PFLOGSUMM):
            runs["pflogsumm"] = ([PFLOGSUMM, str(log)], None)
        _warm_up(runs, log, Path(tmp) / "warm-up.log")
        speeds: dict[str, list[float]] = {name: [] for name in runs}
        cpu_speeds: dict[str, list[float]] = {name: [] for name in runs}
        peaks: dict[str, list[int]] = {name: [] for name in runs}
        for i in range(args.rounds):
            parts = []
            for name, (cmd, cmd_env) in runs.items():
                if name.startswith("follow") and events != os.devnull:
                    Path(events).unlink(missing_ok=True)
                secs, _, peak, cpu = timed(cmd, cmd_env)
                speeds[name].append(n / secs)
                cpu_speeds[name].append(n / cpu if cpu else 0.0)
                peaks[name].append(peak)
                parts.append(f"{name} {n / secs:,.0f} lines/s ({secs:.2f} s, {cpu:.2f} s CPU)")
            print(f"round {i + 1}: " + ", ".join(parts), flush=True)
        _summary(speeds, cpu_speeds, peaks)
        if events != os.devnull:
            print(f"events written by follow: {Path(events).stat().st_size / 1e6:.0f} MB")


def _first_lines(log: Path, count: int) -> bytes:
    """The log's first ``count`` lines."""
    with log.open("rb") as f:
        return b"".join(line for _, line in zip(range(count), f, strict=False))


def _warm_up(
    runs: dict[str, tuple[list[str], dict[str, str] | None]], log: Path, small: Path
) -> None:
    """Run each of our commands once on the log's first 1,000 lines: the timed rounds then
    find their bytecode cache written, as an installed package has it."""
    small.write_bytes(_first_lines(log, 1000))
    for name, (cmd, env) in runs.items():
        if name != "pflogsumm":
            subprocess.run(
                [str(small) if arg == str(log) else arg for arg in cmd],
                stdout=subprocess.DEVNULL,
                check=True,
                env=env,
            )


def _summary(
    speeds: dict[str, list[float]], cpu_speeds: dict[str, list[float]], peaks: dict[str, list[int]]
) -> None:
    """Each run's medians and peak memory, then the ratios against pflogsumm."""
    median = {name: statistics.median(values) for name, values in speeds.items()}
    per_cpu = {name: statistics.median(values) for name, values in cpu_speeds.items()}
    for name, values in speeds.items():
        print(
            f"{name + ':':<14} {median[name]:>9,.0f} lines/s (median of {len(values)}), "
            f"{per_cpu[name]:>9,.0f} lines per CPU second, "
            f"peak RSS {max(peaks[name]) / 1024:.0f} MB"
        )
    if "pflogsumm" not in median:
        print(f"pflogsumm not found at {PFLOGSUMM}")
        return
    theirs, cpu = median["pflogsumm"], per_cpu["pflogsumm"]
    print(f"ratio follow/pflogsumm: {median['follow'] / theirs:.2f}x")
    print(f"ratio report/pflogsumm: {median['report'] / theirs:.2f}x")
    print(
        f"ratio per CPU second (less sensitive to a loaded machine): "
        f"follow/pflogsumm {per_cpu['follow'] / cpu:.2f}x, "
        f"report/pflogsumm {per_cpu['report'] / cpu:.2f}x"
    )
    if "follow-mypyc" in per_cpu:
        print(
            f"with mypyc, per CPU second: "
            f"follow/pflogsumm {per_cpu['follow-mypyc'] / cpu:.2f}x, "
            f"report/pflogsumm {per_cpu['report-mypyc'] / cpu:.2f}x"
        )


def _same_report(ours: list[str], log: Path, compiled: dict[str, str]) -> None:
    """Exit unless the compiled copy's JSON report of the log's first 100,000 lines is byte
    for byte the pure package's."""
    head = _first_lines(log, 100_000)
    outputs = [
        subprocess.run(
            [*ours, "report", "--json", "-"], input=head, capture_output=True, env=env, check=True
        ).stdout
        for env in (None, compiled)
    ]
    if outputs[0] != outputs[1]:
        sys.exit("--mypyc: the compiled copy's report differs from the pure package's")
    print("mypyc: the compiled copy's report is the pure package's, byte for byte")


if __name__ == "__main__":
    main()
