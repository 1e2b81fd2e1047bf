"""Drill 7 of issue 7, load: SESSIONS concurrent SMTP sessions for SECONDS s against one
private Postfix with the milter, the maps server, the policy server and the follower all on.

Wiring: exactly the main.cf lines ``smtp-policy postfix-config --with-policy --print-snippet``
prints for this test's config.toml (parsed and used as printed): the milter on a unix socket
with its fail-open timeouts, footer and DSN socketmaps, the bounce template, and ``check_policy_service`` after
``permit_mynetworks, reject_unauth_destination``. The load therefore goes to the instance's
untrusted listener (empty ``mynetworks``), as internet mail would: a trusted client is
permitted before it ever reaches the policy service. Accepted mail goes to ``discard:``.

Postfix limits raised for 100 concurrent sessions from one address (:data:`LOAD_MAIN_CF`):

* ``default_process_limit = 200``: the default 100 is exactly our session count, so each
  reconnect would wait for an smtpd still finishing the previous session (the master logs
  "has reached its process limit" and clients stall).
* ``smtpd_client_connection_count_limit = 0``: anvil allows 50 concurrent connections per
  client address by default; every client here is 127.0.0.1 and the untrusted listener exempts
  nobody, so sessions 51..100 would get ``421 4.7.0 Too many connections``.

The milter timeouts stay as the product prints them (10 s per command, 60 s for content): a
milter too slow under this load is a finding, seen as a wrong reply or a maillog warning.

Load: one thread per session, raw sockets, no PIPELINING. Each opens a connection, sends up to
:data:`PER_CONNECTION` transactions (fewer than ``smtpd_soft_error_limit``'s 10 errors, so no
error sleeps or 421s) and quits, then reconnects, until the time is up. Transactions are a
seeded mix: accepted (alice@local.test), unknown user (550 5.1.1 from Postfix, with our
footer) and a milter ``[[rules]]`` rejection at MAIL (550 5.7.1 with the rule's text; a
MAIL-stage rule, which the policy service, consulted at RCPT only, never applies). Every reply
is checked against its case.

Milter RSS (VmRSS, sampled every 0.5 s): memory that does not leak grows while the process
first meets its peak load (imports, caches, a thread and its stack per session, malloc arenas
per thread, pymalloc arenas, garbage waiting for a full collection) and then plateaus with a
sawtooth. So the run starts with a warm-up at full concurrency and compares *peaks*: the
second half's highest sample may exceed the first half's highest by at most
:data:`RSS_GROWTH_LIMIT` of it. Peaks are insensitive to where the sawtooth is when a sample is
taken and to how fast a noisy machine happens to run (a slower run only means less traffic,
and a plateau does not depend on traffic). A leak grows with traffic: X bytes per message show
up as X times the second half's messages, so the report prints the smallest leak per message
this run could catch: about 0.7 kB at full size, 2.5 kB at CI size (an event or a session
object is larger). Seen here: without a leak the growth was -0.0 to +0.4 MiB on a ~40 MiB
level; with 5 kB kept per message (a sitecustomize hook) the CI run grew 6 MiB and failed.
"""

from __future__ import annotations

import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smtp_policy.lab.instance import free_port, poll
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from tests.helpers import Daemon, bounce_template, running
from tests.integration.drills import size

pytestmark = pytest.mark.postfix

SESSIONS = size(ci=100, full=100)
SECONDS = size(ci=15, full=60)
WARMUP = size(ci=5, full=10)
PER_CONNECTION = 5
CASES = ("accepted", "unknown", "blocked")
WEIGHTS = (6, 2, 2)
RSS_GROWTH_LIMIT = 0.10
SAMPLE_EVERY = 0.5
CLIENT_TIMEOUT = 120.0
WAIT = 300.0  # for the queue, the milter's and the follower's last events (a loaded machine)

LOAD_MAIN_CF = {
    "default_process_limit": "200",
    "smtpd_client_connection_count_limit": "0",
}

CONFIG = """
[milter]
listen = "unix:{socket}"

[maps]
listen = "inet:127.0.0.1:{maps}"

[policy]
listen = "inet:127.0.0.1:{policy}"

[[rules]]
name = "load-blocked"
stage = "mail"
sender = ["blocked-*@spam.test"]
action = "reject"
code = 550
enhanced = "5.7.1"
reason = "blocked"
text = \"\"\"Mail from {{sender}} is refused here.
This is the load drill's policy rule.\"\"\"
"""

Ev = dict[str, Any]
Reply = tuple[int, list[str]]


# -- the daemons ------------------------------------------------------------------------------


def postfix_config(config: Path, bounce_template: Path) -> dict[str, str]:
    """The main.cf settings ``smtp-policy postfix-config --with-policy --print-snippet`` prints for ``config``."""
    done = subprocess.run(
        [sys.executable, "-m", "smtp_policy", "postfix-config", "--config", str(config),
         "--with-policy", "--print-snippet", "--bounce-template", str(bounce_template)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    settings: dict[str, str] = {}
    key = ""
    for line in done.stdout.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():  # a continuation line
            settings[key] += " " + line.strip()
        else:
            key, _, value = (part.strip() for part in line.partition("="))
            settings[key] = value
    return settings


# -- the load ---------------------------------------------------------------------------------


class UnexpectedReplyError(Exception):
    """A reply that is not the one its case expects; the connection is dropped."""


class SmtpClient:
    """A line-level SMTP client on one connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        self.reader = self.sock.makefile("rb")

    def reply(self) -> Reply:
        """One whole reply: its code and its lines."""
        lines: list[str] = []
        while True:
            raw = self.reader.readline(8192)
            if not raw:
                raise ConnectionError(f"connection closed after {lines}")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if not line[:3].isdigit():
                raise UnexpectedReplyError(f"not a reply: {lines}")
            if line[3:4] != "-":
                return int(line[:3]), lines

    def command(self, line: str) -> Reply:
        """Send one command line and read its reply."""
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        """Close the connection."""
        self.reader.close()
        self.sock.close()


@dataclass
class Connection:
    """What one connection did (every step that got its expected reply)."""

    helo: str
    accepted: int = 0
    unknown: int = 0
    blocked: int = 0
    queue_ids: list[str] = field(default_factory=list)


def message(tag: str) -> bytes:
    """A small message, dot-terminated."""
    head = (
        f"From: <load-{tag}@local.test>\r\nTo: <alice@local.test>\r\n"
        f"Subject: load {tag}\r\nMessage-ID: <{tag}@load.test>\r\n\r\n"
    )
    return (head + "The load drill.\r\n" + ("x" * 70 + "\r\n") * 10 + ".\r\n").encode()


class Load:
    """``sessions`` threads, each holding one SMTP session at a time until ``seconds`` pass."""

    def __init__(self, port: int, sessions: int, seconds: float) -> None:
        self.port = port
        self.sessions = sessions
        self.seconds = seconds
        self.codes: Counter[int] = Counter()
        self.unexpected: list[str] = []
        self.connections: list[Connection] = []
        self.active = 0
        self.peak = 0
        self.elapsed = 0.0
        self._lock = threading.Lock()
        self._deadline = 0.0
        self._all_connected = threading.Barrier(sessions)  # the first sessions overlap fully

    def run(self) -> None:
        """Run the whole load; return when every session has quit."""
        started = time.monotonic()
        self._deadline = started + self.seconds
        threads = [
            threading.Thread(target=self._worker, args=(n,), name=f"load-{n}", daemon=True)
            for n in range(self.sessions)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.elapsed = time.monotonic() - started

    def total(self, case: str) -> int:
        """Transactions of ``case`` that got every expected reply."""
        return sum(int(getattr(c, case)) for c in self.connections)

    def _worker(self, n: int) -> None:
        rng = random.Random(n)
        number = 0
        while time.monotonic() < self._deadline:
            number += 1
            conn = Connection(helo=f"c{n}-{number}.load.test")
            try:
                self._session(conn, rng, first=number == 1)
            except UnexpectedReplyError as exc:
                self._note(f"{conn.helo}: {exc}")
                self._all_connected.abort()
            except (OSError, ValueError, threading.BrokenBarrierError) as exc:
                self._note(f"{conn.helo}: {exc!r}")
                self._all_connected.abort()
            with self._lock:
                self.connections.append(conn)

    def _note(self, problem: str) -> None:
        with self._lock:
            self.unexpected.append(problem)

    def _session(self, conn: Connection, rng: random.Random, *, first: bool) -> None:
        client = SmtpClient(self.port)
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if first:
                self._all_connected.wait(CLIENT_TIMEOUT)
            self._expect("greeting", client.reply(), 220)
            self._expect("EHLO", client.command(f"EHLO {conn.helo}"), 250)
            for i in range(PER_CONNECTION):
                if i and time.monotonic() >= self._deadline:
                    break
                case = rng.choices(CASES, WEIGHTS)[0]
                self._transaction(client, conn, case, f"{conn.helo.split('.')[0]}-{i}")
            self._expect("QUIT", client.command("QUIT"), 221)
        finally:
            with self._lock:
                self.active -= 1
            client.close()

    def _transaction(self, client: SmtpClient, conn: Connection, case: str, tag: str) -> None:
        if case == "blocked":
            reply = client.command(f"MAIL FROM:<blocked-{tag}@spam.test>")
            self._expect("blocked MAIL", reply, 550, "5.7.1", f"blocked-{tag}@spam.test is refused")
            conn.blocked += 1
            return
        self._expect("MAIL", client.command(f"MAIL FROM:<load-{tag}@local.test>"), 250)
        if case == "unknown":
            reply = client.command(f"RCPT TO:<nobody-{tag}@local.test>")
            self._expect("unknown RCPT", reply, 550, "5.1.1", "User unknown", footer=True)
            self._expect("RSET", client.command("RSET"), 250)
            conn.unknown += 1
            return
        self._expect("RCPT", client.command("RCPT TO:<alice@local.test>"), 250)
        self._expect("DATA", client.command("DATA"), 354)
        client.sock.sendall(message(tag))
        code, lines = client.reply()
        self._expect("end of data", (code, lines), 250, "queued as")
        conn.queue_ids.append(lines[-1].rsplit(" ", 1)[-1])
        conn.accepted += 1

    def _expect(
        self, step: str, reply: Reply, code: int, *needles: str, footer: bool = False
    ) -> None:
        """Count the reply; raise UnexpectedReplyError unless it is ``code`` with ``needles``
        (and, with ``footer``, a second line: the maps server's footer)."""
        got, lines = reply
        with self._lock:
            self.codes[got] += 1
        text = "\n".join(lines)
        if got != code or not all(n in text for n in needles) or (footer and len(lines) < 2):
            raise UnexpectedReplyError(f"{step}: expected {code} {needles}, got {lines}")


# -- milter RSS -------------------------------------------------------------------------------


class Sampler:
    """Samples a process's VmRSS (kB) and thread count every SAMPLE_EVERY seconds."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.samples: list[tuple[float, int, int]] = []  # (seconds since start, kB, threads)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._started = 0.0

    def __enter__(self) -> Sampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            memory = self.daemon.memory()
            if memory is None:  # the milter is gone: the checks on its exit say why
                return
            rss, threads = memory
            self.samples.append((time.monotonic() - self._started, rss, threads))
            if self._stop.wait(SAMPLE_EVERY):
                return

    def between(self, start: float, end: float) -> list[int]:
        """RSS samples (kB) taken in [start, end)."""
        return [kb for t, kb, _ in self.samples if start <= t < end]


# -- the maillog ------------------------------------------------------------------------------

#: Maillog lines that carry a reply, by the follower's kind for them.
REPLY_LINES = {
    "smtpd_reject": re.compile(r"\]: NOQUEUE: reject: RCPT from "),
    "milter_reject": re.compile(r"\]: NOQUEUE: milter-reject: MAIL from "),
    "delivery": re.compile(r"\]: [0-9A-F]+: to=<[^>]*>, .* status=\w+ "),
}
ANY_REPLY_LINE = re.compile(r": (?:NOQUEUE|[0-9A-F]+): (?:\S+: )?(?:milter-)?reject: | status=")
POSTFIX_TROUBLE = re.compile(
    r"(?:warning|fatal|panic|error): |process limit|too many|timeout|timed out", re.IGNORECASE
)
#: cleanup's warnings about the host's clock (a file system a second ahead of the local clock
#: on a busy virtual machine): about the machine, not overload or a broken hook.
HOST_CLOCK = re.compile(
    r"warning: (?:file system clock is \d+ seconds? (?:ahead of|behind) local clock"
    r"|resetting file time stamps)"
)


@pytest.mark.slow
def test_load_with_everything_on(
    tmp_path: Path, make_postfix: PostfixFactory, drill_report: Callable[[str], None]
) -> None:
    """SESSIONS concurrent sessions for SECONDS s: every reply as expected, every accepted
    message delivered, every daemon error-free and its counts matching, milter RSS flat."""
    began = time.monotonic()
    shared = Path(tempfile.mkdtemp(prefix="smtp-policy-load-"))
    shared.chmod(0o755)  # smtpd runs as postfix: it must reach the milter's socket
    config = tmp_path / "config.toml"
    config.write_text(
        CONFIG.format(socket=shared / "milter.sock", maps=free_port(), policy=free_port())
    )
    template = bounce_template(shared / "bounce.cf")
    wiring = postfix_config(config, template)
    assert "check_policy_service" in wiring["smtpd_recipient_restrictions"]
    assert wiring["smtpd_milters"].startswith(f"{{ unix:{shared}/milter.sock, default_action")
    milter = Daemon("milter", tmp_path, "--config", str(config))
    maps = Daemon("maps", tmp_path, "--config", str(config))
    policy = Daemon("policy", tmp_path, "--config", str(config))
    try:
        with running(milter, maps, policy):
            pf = make_postfix(discard=True, main_cf={**wiring, **LOAD_MAIN_CF})
            follow = Daemon(
                "follow", tmp_path, "--log", str(pf.maillog), "--from-start",
                "--state", str(tmp_path / "follow-state"),
            )  # fmt: skip
            with running(follow):
                load = Load(pf.untrusted_port, SESSIONS, WARMUP + SECONDS)
                with Sampler(milter) as rss:
                    load.run()
                maillog = _settle(pf, load, milter, follow)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    run = Run(load, rss, maillog, milter, maps, policy, follow)
    _report(run, drill_report, time.monotonic() - began)
    _check(run)


@dataclass
class Maillog:
    """What the maillog said once the queue was empty."""

    delivered: int  #: status=sent lines of the discard transport
    replies: Counter[str]  #: reply lines by the follower's kind, and "all"
    trouble: list[str]  #: warnings and other lines that mean overload or a broken hook


def _settle(pf: PrivatePostfix, load: Load, milter: Daemon, follow: Daemon) -> Maillog:
    """Wait for the queue, the milter's session events and the follower; stop the follower.

    Fails at once on unexpected replies (waiting for mail that was never accepted helps nobody).
    """
    assert not load.unexpected, "\n".join(load.unexpected[:20])
    assert pf.maillog.exists(), f"{pf.root} vanished during the run"
    accepted = load.total("accepted")
    helos = {c.helo for c in load.connections}
    pf.wait_queue_empty(WAIT)
    sent = r"\]: [0-9A-F]+: to=<alice@local\.test>, relay=none, .*status=sent"
    delivered = len(pf.wait_for_log(sent, WAIT, count=accepted))
    milter.wait_for(
        lambda e: e["event"] == "session" and e.get("helo") in helos, WAIT, count=len(helos)
    )
    pf.wait_queue_empty(WAIT)  # again: notify_classes' transcripts follow the sessions' ends
    lines = pf.maillog_lines()
    replies = Counter(k for line in lines for k, rx in REPLY_LINES.items() if rx.search(line))
    replies["all"] = sum(1 for line in lines if ANY_REPLY_LINE.search(line))
    poll(
        lambda: (
            (
                len(follow.events.of("reply")) >= replies["all"]
                and len(follow.events.of("message")) >= accepted
            )
            or None
        ),
        WAIT,
        lambda: f"{replies['all']} follower replies and {accepted} message records",
    )
    follow.stop()
    trouble = [
        line for line in lines if POSTFIX_TROUBLE.search(line) and not HOST_CLOCK.search(line)
    ]
    return Maillog(delivered, replies, trouble)


def _rss(rss: Sampler) -> dict[str, int]:
    """start/peak/end, the first half's level (its peak) and the second half's growth, kB."""
    mid, end = WARMUP + SECONDS / 2, WARMUP + SECONDS
    first, second = rss.between(WARMUP, mid), rss.between(mid, end + 1)
    assert first and second, f"the milter's RSS was not sampled throughout: {rss.samples}"
    return {
        "start": first[0],
        "peak": max(first + second),
        "end": second[-1],
        "level": max(first),
        "growth": max(second) - max(first),
    }


@dataclass
class Run:
    """Everything a finished run left to report on and check."""

    load: Load
    rss: Sampler
    maillog: Maillog
    milter: Daemon
    maps: Daemon
    policy: Daemon
    follow: Daemon


def _report(run: Run, report: Callable[[str], None], runtime: float) -> None:
    """The drill's numbers, printed in the run's summary."""
    load, rss, maillog, follow = run.load, run.rss, run.maillog, run.follow
    accepted, unknown, blocked = (load.total(c) for c in CASES)
    transactions = accepted + unknown + blocked
    kb = _rss(rss)
    second_half = accepted * (SECONDS / 2) / (WARMUP + SECONDS)
    report(
        f"{SESSIONS} sessions x {SECONDS} s (+{WARMUP} s warm-up), peak {load.peak} concurrent, "
        f"milter threads peak {max(t for _, _, t in rss.samples)}: "
        f"{len(load.connections)} connections, {transactions} transactions ({accepted} "
        f"accepted, {unknown} unknown user, {blocked} milter rule), "
        f"{accepted / load.elapsed:.0f} messages/s, {transactions / load.elapsed:.0f} "
        f"transactions/s, {len(load.unexpected)} unexpected replies"
    )
    report("replies by code: " + ", ".join(f"{c}={n}" for c, n in sorted(load.codes.items())))
    report(
        f"milter RSS start {kb['start'] / 1024:.1f} MiB, peak {kb['peak'] / 1024:.1f} MiB, "
        f"end {kb['end'] / 1024:.1f} MiB; second-half growth {kb['growth'] / 1024:+.1f} MiB "
        f"over a first-half level of {kb['level'] / 1024:.1f} MiB (limit "
        f"{RSS_GROWTH_LIMIT:.0%}: catches leaks above "
        f"~{RSS_GROWTH_LIMIT * kb['level'] * 1024 / max(second_half, 1):.0f} bytes/message)"
    )
    report(
        f"delivered {maillog.delivered}; follower {len(follow.events.of('reply'))} reply events "
        f"for {maillog.replies['all']} maillog reply lines, "
        f"{len(follow.events.of('message'))} message records; maps "
        f"{len(run.maps.events.of('lookup'))} lookups; policy "
        f"{len(run.policy.events.of('policy_request'))} requests; runtime {runtime:.0f} s"
    )


def _check(run: Run) -> None:
    """Every assertion of the drill."""
    load, maillog, milter, maps, policy, follow = (
        run.load, run.maillog, run.milter, run.maps, run.policy, run.follow
    )  # fmt: skip
    accepted, unknown, blocked = (load.total(c) for c in CASES)
    assert load.peak == SESSIONS
    assert not load.unexpected, "\n".join(load.unexpected[:20])
    assert set(load.codes) <= {220, 221, 250, 354, 550}, load.codes
    assert maillog.trouble == [], "\n".join(maillog.trouble[:20])
    assert maillog.delivered == accepted
    for daemon in (milter, maps, policy, follow):
        assert daemon.returncode == 0, (daemon.name, daemon.stderr())
        assert "Traceback" not in daemon.stderr(), daemon.stderr()
        problems = [e for e in daemon.events.read() if e["event"] in ("error", "warning")]
        assert problems == [], (daemon.name, problems[:5])

    # the milter: one session summary per connection, with that connection's counts
    helos = Counter(e.get("helo") for e in milter.events.of("session"))
    sessions = {e.get("helo"): e for e in milter.events.of("session")}
    policy_replies = Counter(
        e.get("session") for e in milter.events.of("reply") if e.get("by") == "policy"
    )
    for conn in load.connections:
        assert helos[conn.helo] == 1, conn.helo
        s = sessions[conn.helo]
        assert (s["errors"], s["messages"], s["rejected_by_mta"], s["rejected_by_policy"]) == (
            0, conn.accepted, conn.unknown, 0
        ), (conn, s)  # fmt: skip
        assert s["queue_ids"] == conn.queue_ids, (conn, s)
        assert s["commands"].get("mail", 0) == conn.accepted + conn.unknown + conn.blocked
        assert (s["commands"]["connect"], s["commands"]["helo"]) == (1, 1), s
        assert policy_replies[s.get("session")] == conn.blocked, (conn, s)
    stages = Counter(e.get("stage") for e in milter.events.of("stage"))
    assert stages["eom"] == accepted
    mta_rejects = [e for e in milter.events.of("reply") if e.get("by") == "mta"]
    assert len(mta_rejects) == unknown
    assert {e.get("reason") for e in mta_rejects} == {"user_unknown"}

    # the maps server: a footer for every Postfix rejection; the policy service: every RCPT
    footers = [e for e in maps.events.of("lookup") if e.get("map") == "footer"]
    assert len(footers) == unknown + blocked  # a footer lookup for every 5xx reply
    requests = [e for e in policy.events.of("policy_request") if e.get("stage") == "rcpt"]
    assert len(requests) == accepted + unknown
    assert {e["action"] for e in requests} == {"DUNNO"}

    # the follower: every reply line of the maillog, one record per accepted message
    replies = Counter(e["kind"] for e in follow.events.of("reply"))
    assert sum(replies.values()) == maillog.replies["all"]
    assert replies == {k: maillog.replies[k] for k in REPLY_LINES}
    assert (replies["smtpd_reject"], replies["milter_reject"]) == (unknown, blocked)
    records = follow.events.of("message")  # ours, and notify_classes' transcripts to postmaster
    # (discard=True: every message goes to the discard transport, so "discarded")
    assert all(r["status"] == "discarded" and r["complete"] for r in records)
    assert Counter(r.get("recipient") for r in records) == {
        "alice@local.test": accepted,
        "postmaster@local.test": len(records) - accepted,
    }
    assert replies["delivery"] == len(records)
    (final,) = [e for e in follow.events.of("stats") if e["final"]]
    assert final["unknown"] == 0, final

    # the milter's RSS: flat once warm (see the module docstring)
    kb = _rss(run.rss)
    assert kb["growth"] <= RSS_GROWTH_LIMIT * kb["level"], run.rss.samples


def quit_after(port: int, *commands: str) -> int:
    """A session of ``commands`` (replies not checked), then QUIT; returns the client's port."""
    client = SmtpClient(port)
    try:
        client.reply()
        for command in commands:
            client.command(command)
        client.command("QUIT")
        return int(client.sock.getsockname()[1])
    finally:
        client.close()


def test_steps_right_before_a_quit_are_recorded(
    tmp_path: Path, make_postfix: PostfixFactory
) -> None:
    """Regression, found by the load drill: the milter's default (``--noreply auto``) on a
    unix socket must not lose the last steps of a session.

    With "no reply" negotiated, Postfix does not wait after such a step: a client that quits
    right after it makes Postfix send the step, ABORT and QUIT and close the socket at once.
    libmilter polls, sees POLLHUP with the data and drops every unread command (checked with a
    bare pymilter milter too), so the rejected RCPT, the HELO or the connect was never
    recorded: a fifth of the unknown-user rejections of the load drill went missing.
    """
    shared = Path(tempfile.mkdtemp(prefix="smtp-policy-load-"))
    shared.chmod(0o755)  # smtpd runs as postfix: it must reach the milter's socket
    config = tmp_path / "config.toml"
    config.write_text("")
    milter = Daemon(
        "milter", tmp_path, "--config", str(config), "--listen", f"unix:{shared}/m.sock"
    )
    rounds = 10
    try:
        with running(milter):
            pf = make_postfix(milters=f"{{ unix:{shared}/m.sock, default_action=accept }}")
            ports = []
            for n in range(rounds):
                ports.append(quit_after(pf.smtp_port))
                quit_after(pf.smtp_port, f"EHLO helo-{n}.load.test")
                quit_after(
                    pf.smtp_port,
                    f"EHLO rcpt-{n}.load.test",
                    "MAIL FROM:<sender@local.test>",
                    f"RCPT TO:<nobody-{n}@local.test>",
                )
            milter.wait_for(lambda e: e["event"] == "session", WAIT, count=3 * rounds)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    connects = {e["client_port"] for e in milter.events.of("stage") if e.get("stage") == "connect"}
    helos = [e["helo"] for e in milter.events.of("stage") if e.get("stage") == "helo"]
    rejected = [e["recipient"] for e in milter.events.of("reply") if e["by"] == "mta"]
    assert set(ports) <= connects
    assert sorted(h for h in helos if h.startswith("helo-")) == sorted(
        f"helo-{n}.load.test" for n in range(rounds)
    )
    assert sorted(rejected) == sorted(f"nobody-{n}@local.test" for n in range(rounds))
