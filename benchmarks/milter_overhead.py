"""What the milter costs Postfix: smtp-source throughput with no milter, a no-op pymilter and
smtp_policy's milter, over TCP and a unix socket, with and without "no reply" flags.

smtp_policy's milter runs on either engine: ``policy-*`` configurations on libmilter
(``--engine libmilter``, the engine of earlier versions), ``engine-*`` on our own asyncio engine
(``--engine asyncio``, the default); ``engine-unix`` and ``engine-tcp`` are the shipped
defaults (``--noreply auto``: on over the unix socket, off over TCP); ``engine-unix-w2`` runs
two worker processes (``--workers 2``); its CPU and peak RSS are summed over both;
``engine-unix-session`` is ``engine-unix`` with ``--events-mode session`` (one ``session``
event per SMTP session instead of an event per stage; its end-of-message count is read from
the session events). ``c-noop-unix``, ``c-nr-unix`` and ``c-eom-unix`` run
benchmarks/noop_milter.c (compiled with gcc against libmilter on first use): a no-op milter in
C answering every step; one sent the steps ``engine-unix`` is sent (every stage, no content)
and answering none but end-of-message, the floor of a milter that records every stage; and
one that negotiates away every step Postfix lets a milter skip and sees only end-of-message,
the floor of what any milter costs Postfix.

One private Postfix delivers everything to ``discard:`` (the queue on a tmpfs mounted under
its temp dir when that works; the output says which). Its master.cf has one smtpd listener
per configuration, each with its own ``smtpd_milters``, and ``max_use`` is raised so that the
same smtpd processes serve a whole round. Configurations run in turn, round after round
(A B C ... A B C ...), so that all of them see the same machine. Per run: the milter process
is started fresh, ``--warmup`` messages are sent and the queue drained, then
``smtp-source -s SESSIONS -m MESSAGES -l SIZE`` is timed; the milter's peak RSS (VmHWM) is
read from /proc before it is stopped, and its end-of-message count is checked (every message
must have passed through it); its CPU time (utime + stime from /proc) over the timed run gives
CPU per message. Milter warnings in the maillog are counted too. Then ``--latency`` messages
are sent one at a time (smtplib, a new connection each) for the median and 90th percentile
time per transaction: parallel sessions hide a per-message stall that this shows (the
delayed-ACK stall of "no reply" steps over TCP, research/perf-baseline.md).

Prints each run, then per configuration the median msgs/s, the ratio to no milter and to the
no-op pymilter on the same transport, the milter's CPU per message, its peak RSS and the
latency. Nothing is asserted: the machine is shared and noisy.

    .venv/bin/python benchmarks/milter_overhead.py                      # the full run
    .venv/bin/python benchmarks/milter_overhead.py --rounds 1 --messages 300 --warmup 50
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the tests' Postfix library importable
    sys.path.insert(0, str(ROOT))
from smtp_policy.lab.instance import free_port, poll  # noqa: E402
from smtp_policy.lab.postfix import PrivatePostfix  # noqa: E402
from tests.helpers import Daemon  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER, RECIPIENT = "bench@local.test", "alice@local.test"
#: Everything to discard: (no spaces inside the inline table's values).
MAIN_CF = {
    "transport_maps": "inline:{ local.test=discard:, remote.test=discard: }",
    "default_transport": "discard:",
    "relay_transport": "discard:",
    "max_use": "100000",
    "milter_default_action": "accept",
    "smtpd_client_connection_count_limit": "0",
}


@dataclass(frozen=True)
class Setup:
    """One configuration: which milter (none, noop, policy), transport and no-reply flags."""

    name: str
    milter: str | None = None  # "noop", "policy"; "c-noop", "c-nr", "c-eom" (noop_milter.c)
    transport: str = "tcp"  # "tcp" or "unix"
    noreply: bool | None = False  # None: the shipped default (--noreply auto)
    engine: str = "libmilter"  # smtp_policy's engine: "libmilter" or "asyncio"
    workers: int = 1  # the asyncio engine's processes
    events_mode: str = "stages"  # smtp_policy's --events-mode

    @property
    def baseline(self) -> str:
        """The no-op pymilter on the same transport."""
        return f"noop-{self.transport}"


#: The C no-op milter's command-line options per configuration (benchmarks/noop_milter.c).
C_MODES: dict[str, list[str]] = {"c-noop": [], "c-nr": ["--no-reply"], "c-eom": ["--eom-only"]}

SETUPS = {
    s.name: s
    for s in (
        Setup("none"),
        Setup("noop-tcp", "noop", "tcp"),
        Setup("noop-unix", "noop", "unix"),
        Setup("c-noop-unix", "c-noop", "unix"),
        Setup("c-nr-unix", "c-nr", "unix"),
        Setup("c-eom-unix", "c-eom", "unix"),
        Setup("policy-tcp", "policy", "tcp"),
        Setup("policy-tcp-noreply", "policy", "tcp", noreply=True),
        Setup("policy-unix", "policy", "unix"),
        Setup("policy-unix-noreply", "policy", "unix", noreply=True),
        Setup("engine-tcp", "policy", "tcp", noreply=None, engine="asyncio"),
        Setup("engine-unix", "policy", "unix", noreply=None, engine="asyncio"),
        Setup("engine-unix-reply", "policy", "unix", noreply=False, engine="asyncio"),
        Setup("engine-unix-w2", "policy", "unix", noreply=None, engine="asyncio", workers=2),
        Setup(
            "engine-unix-session",
            "policy",
            "unix",
            noreply=None,
            engine="asyncio",
            events_mode="session",
        ),
    )
}


@dataclass
class Result:
    """One timed run."""

    rate: float
    hwm_kb: int | None
    eom: int | None
    warnings: int
    cpu_ms: float | None  # milter CPU per message
    latency_ms: list[float]


class BenchPostfix(PrivatePostfix):
    """A PrivatePostfix whose queue directory is a tmpfs, when one can be mounted."""

    tmpfs: Path | None = None
    tmpfs_problem: str = ""
    use_tmpfs: bool = True

    def _make_tree(self) -> None:
        super()._make_tree()
        if not self.use_tmpfs:
            self.tmpfs_problem = "not asked for (--no-tmpfs)"
            return
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2g,mode=755", "tmpfs", str(self.queue_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            self.tmpfs = self.queue_dir
        else:
            self.tmpfs_problem = (done.stderr or done.stdout).strip() or "mount failed"

    def teardown(self) -> None:
        """Stop Postfix, unmount the tmpfs and remove the temp dir."""
        root = self.root if self._root is not None else None
        try:
            self.stop()
        finally:
            if self.tmpfs is not None:
                subprocess.run(["umount", "-l", str(self.tmpfs)], check=False)
            if root is not None:
                shutil.rmtree(root, ignore_errors=True)


class MilterRun:
    """One milter process for one run: the no-op pymilter, or smtp_policy's as a Daemon."""

    def __init__(self, setup: Setup, workdir: Path, port: int) -> None:
        self.setup = setup
        self.workdir = workdir
        self.port = port
        self.events = workdir / f"{setup.name}.jsonl"
        self.stats = workdir / f"{setup.name}.stats.json"
        self.stderr = workdir / f"{setup.name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None  # whichever milter runs
        self.daemon: Daemon | None = None  # smtp_policy's milter, while it runs

    @property
    def socket_path(self) -> Path:
        return self.workdir / f"{self.setup.name}.sock"

    @property
    def listen(self) -> str:
        """libmilter's spelling."""
        if self.setup.transport == "unix":
            return f"unix:{self.socket_path}"
        return f"inet:{self.port}@127.0.0.1"

    @property
    def postfix_spec(self) -> str:
        """``smtpd_milters`` for this milter."""
        if self.setup.transport == "unix":
            return f"unix:{self.socket_path}"
        return f"inet:127.0.0.1:{self.port}"

    def start(self, tries: int = 3) -> None:
        """Start the milter and wait until it accepts connections (a few tries: the source
        tree may be mid-edit when it imports)."""
        for attempt in range(1, tries + 1):
            try:
                self._start_once()
                return
            except RuntimeError:
                if attempt == tries:
                    raise
                time.sleep(2)

    def _start_once(self) -> None:
        for path in (self.events, self.stats, self.stderr):
            path.unlink(missing_ok=True)
        try:
            if self.setup.milter == "noop":
                self._start_noop()
            elif self.setup.milter in C_MODES:
                self._start_c()
            else:
                self._start_policy()
        except AssertionError as failure:  # it exited, or was not ready within 30 s
            self._discard()
            tail = self.stderr.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{self.setup.name}: the milter did not start: {tail}") from failure

    def _start_noop(self) -> None:
        """The no-op pymilter, ready once it accepts connections."""
        argv = [sys.executable, str(ROOT / "benchmarks" / "noop_milter.py"),
                "--socket", self.listen, "--stats", str(self.stats)]  # fmt: skip
        self._run_until_accepting(argv)

    def _start_c(self) -> None:
        """The no-op milter in C (compiled on first use), in the configuration's mode."""
        binary = self.workdir / "noop_milter_c"
        if not binary.exists():
            subprocess.run(
                ["gcc", "-O2", "-o", str(binary), str(ROOT / "benchmarks" / "noop_milter.c"),
                 "-lmilter", "-lpthread"],
                check=True,
            )  # fmt: skip
        argv = [str(binary), "--socket", self.listen, "--stats", str(self.stats)]
        argv += C_MODES[self.setup.milter or ""]
        self._run_until_accepting(argv)

    def _run_until_accepting(self, argv: list[str]) -> None:
        """Start a no-op milter (stderr to its file) and wait until it accepts connections."""
        with self.stderr.open("wb") as err:
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, umask=0o111
            )
        self.proc = proc
        poll(
            lambda: self._accepts() or None,
            30,
            lambda: f"{self.setup.name} to accept connections",
            unless=lambda: proc.poll() is not None,
        )

    def _start_policy(self) -> None:
        """smtp_policy's milter, ready once it wrote its ``started`` event (it listens then)."""
        config = self.workdir / "empty.toml"
        config.write_text("")
        self.daemon = Daemon(
            "milter", self.workdir, "--listen", self.listen, "--config", str(config),
            "--engine", self.setup.engine, "--workers", str(self.setup.workers),
            "--noreply", {None: "auto", True: "on", False: "off"}[self.setup.noreply],
            "--events-mode", self.setup.events_mode,
            name=self.setup.name, events=self.events, cwd=ROOT,
        )  # fmt: skip
        self.daemon.start(timeout=30)
        self.proc = self.daemon.proc

    def _discard(self) -> None:
        """Kill a milter that did not start."""
        if self.daemon is not None:
            if self.daemon.proc is not None:
                self.daemon.kill()
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = self.daemon = None

    def _accepts(self) -> bool:
        family = socket.AF_UNIX if self.setup.transport == "unix" else socket.AF_INET
        target: str | tuple[str, int] = (
            str(self.socket_path) if self.setup.transport == "unix" else ("127.0.0.1", self.port)
        )
        if self.setup.transport == "unix" and not self.socket_path.exists():
            return False
        with socket.socket(family) as probe:
            try:
                probe.connect(target)
            except OSError:
                return False
        return True

    def pids(self) -> list[int]:
        """The milter's process and its worker processes (``--workers``)."""
        if self.proc is None:
            return []
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [pid, *(int(c) for c in children)]

    def hwm_kb(self) -> int | None:
        """The milter's peak resident set (VmHWM), in kB, summed over its processes."""
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        return total or None

    def cpu_seconds(self) -> float:
        """The milter's CPU time so far (all threads and worker processes, user + system)."""
        assert self.proc is not None
        ticks = 0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int | None:
        """SIGTERM; the end-of-message count the milter saw. smtp_policy's must exit 0 without
        a traceback."""
        if self.daemon is not None:
            daemon, self.daemon, self.proc = self.daemon, None, None
            daemon.stop(30)
            if self.setup.events_mode == "session":  # no stage events: count in the sessions
                return sum(int(e["commands"].get("eom", 0)) for e in daemon.events.of("session"))
            return sum(1 for e in daemon.events.of("stage") if e.get("stage") == "eom")
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.stats.exists():
            return None
        return int(json.loads(self.stats.read_text())["eom"])


def smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    """Run smtp-source; return its wall time in seconds."""
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"]  # fmt: skip
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=3600)
    return time.monotonic() - start


def latencies(port: int, count: int, size: int) -> list[float]:
    """Milliseconds per transaction, one message at a time, a new connection each."""
    message = b"Subject: latency\r\n\r\n" + b"x" * size + b"\r\n"
    out = []
    for _ in range(count):
        start = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail(SENDER, [RECIPIENT], message)
        out.append((time.perf_counter() - start) * 1000)
    return out


def run_once(
    pf: BenchPostfix, setup: Setup, ports: dict[str, int], milters: dict[str, MilterRun],
    args: argparse.Namespace,
) -> Result:  # fmt: skip
    """Warm up, time one smtp-source run through ``setup``'s listener, then the latency."""
    milter = milters.get(setup.name)
    port = ports[setup.name]
    mark = len(pf.maillog_lines())
    if milter is not None:
        milter.start()
    try:
        if args.warmup:
            smtp_source(port, args.warmup, args.sessions, args.size)
        pf.wait_queue_empty(120)
        cpu_before = milter.cpu_seconds() if milter else 0.0
        elapsed = smtp_source(port, args.messages, args.sessions, args.size)
        cpu = (milter.cpu_seconds() - cpu_before) * 1000 / args.messages if milter else None
        pf.wait_queue_empty(300)
        latency = latencies(port, args.latency, args.size)
        pf.wait_queue_empty(120)
        hwm = milter.hwm_kb() if milter else None
    finally:
        eom = milter.stop() if milter else None
    warnings = len(pf.log_matches(r"warning: .*[Mm]ilter", since=mark))
    expected = None if eom is None else eom - args.latency  # the latency messages passed too
    return Result(args.messages / elapsed, hwm, expected, warnings, cpu, latency)


def main() -> None:
    """Parse the options, run the rounds, print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5000, help="timed messages per run")
    parser.add_argument("--warmup", type=int, default=200, help="untimed messages first")
    parser.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions")
    parser.add_argument("--size", type=int, default=2000, help="message size in bytes")
    parser.add_argument(
        "--latency", type=int, default=50, help="messages sent one at a time afterwards"
    )
    parser.add_argument(
        "--configs", default=",".join(SETUPS), help=f"comma-separated, of: {', '.join(SETUPS)}"
    )
    parser.add_argument("--no-tmpfs", action="store_true", help="keep the queue on disk")
    args = parser.parse_args()
    setups = [SETUPS[name] for name in args.configs.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="smtp-policy-bench-"))
    workdir.chmod(0o755)  # smtpd (user postfix) must reach the unix sockets
    try:
        results = _run(setups, workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _summary(setups, results, args)


def _run(setups: list[Setup], workdir: Path, args: argparse.Namespace) -> dict[str, list[Result]]:
    ports = {s.name: free_port() for s in setups}
    milters = {s.name: MilterRun(s, workdir, free_port()) for s in setups if s.milter is not None}
    master = [
        f"127.0.0.1:{ports[s.name]} inet n - n - - smtpd -o smtpd_milters="
        + (milters[s.name].postfix_spec if s.name in milters else "")
        for s in setups
    ]
    pf = BenchPostfix(main_cf=MAIN_CF, master_cf=master)
    pf.use_tmpfs = not args.no_tmpfs
    results: dict[str, list[Result]] = {s.name: [] for s in setups}
    try:
        pf.start()
        where = f"tmpfs at {pf.tmpfs}" if pf.tmpfs else f"disk ({pf.tmpfs_problem})"
        print(f"queue: {where}; {args.messages} messages x {args.rounds} rounds, "
              f"{args.sessions} sessions, {args.size} bytes, warm-up {args.warmup}")  # fmt: skip
        for number in range(1, args.rounds + 1):
            for setup in setups:
                result = run_once(pf, setup, ports, milters, args)
                results[setup.name].append(result)
                print(f"round {number} {setup.name:<20} {result.rate:8.0f} msg/s"
                      f"  latency {_median(result.latency_ms):6.2f} ms"
                      f"  eom={result.eom}  warnings={result.warnings}", flush=True)  # fmt: skip
    finally:
        pf.teardown()
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)] if values else float("nan")


def _summary(
    setups: list[Setup], results: dict[str, list[Result]], args: argparse.Namespace
) -> None:
    median = {n: statistics.median(r.rate for r in runs) for n, runs in results.items() if runs}
    print()
    print(f"{'config':<20} {'msg/s':>6} {'vs none':>8} {'vs noop':>8} {'CPU/msg':>8} "
          f"{'peak RSS':>9} {'latency p50/p90':>16}  runs (msg/s)  eom check")  # fmt: skip
    for setup in setups:
        runs = results[setup.name]
        if not runs:
            continue
        rate = median[setup.name]
        vs_none = f"{rate / median['none']:.2f}" if "none" in median else "-"
        base = setup.baseline if setup.milter not in (None, "noop") else None
        vs_noop = f"{rate / median[base]:.2f}" if base in median else "-"
        cpus = [r.cpu_ms for r in runs if r.cpu_ms is not None]
        cpu = f"{statistics.median(cpus):.2f} ms" if cpus else "-"
        hwms = [r.hwm_kb for r in runs if r.hwm_kb]
        rss = f"{max(hwms) / 1024:.1f} MB" if hwms else "-"
        lat = [x for r in runs for x in r.latency_ms]
        latency = f"{_median(lat):.1f}/{_p90(lat):.1f} ms" if lat else "-"
        eoms = {r.eom for r in runs}
        expected = args.warmup + args.messages
        check = "-" if eoms == {None} else "ok" if eoms == {expected} else f"saw {eoms}"
        rounds = " ".join(f"{r.rate:.0f}" for r in runs)
        print(f"{setup.name:<20} {rate:6.0f} {vs_none:>8} {vs_noop:>8} {cpu:>8} {rss:>9} "
              f"{latency:>16}  {rounds}  {check}")  # fmt: skip


if __name__ == "__main__":
    main()
