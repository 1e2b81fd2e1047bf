"""Drill 3 (issue 7): the maps server and the policy server down and hung under load.

Postfix runs with the lines ``smtp-policy postfix-config --with-policy --print-snippet``
recommends (footer and DSN socketmaps,
``check_policy_service { ..., timeout=5s, default_action=DUNNO }``, the bounce template) while a steady stream of messages flows: unknown users (trusted and untrusted
clients), relaying denied, local deliveries (one kind through the policy service), mail relayed
to a scripted downstream server, and mail that server bounces.

Both daemons are killed (SIGKILL) and restarted, then hung (SIGSTOP) and resumed (SIGCONT).
Every reply must have the code and first line it has with both daemons up, only without the
footer; every accepted message is delivered or bounced exactly once; the mail log has warnings
but no fatal, panic or error line; footers, DSN lookups and policy requests come back.

Postfix's socketmap I/O timeout is fixed at 100 s ("the protocol limits are not yet
configurable", socketmap_table(5)), so the hung part costs more than 100 s. It runs once, here
(``test_hooks_postfix.py`` covers the down case alone, quickly). The policy service's timeout
is the recommended per-service ``timeout=5s``: with ``smtpd_policy_service_try_limit`` = 2 and
``_retry_delay`` = 1 s a hung policy server costs one RCPT about 11 s, then DUNNO.
"""

from __future__ import annotations

import re
import smtplib
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from smtp_policy.lab.instance import delivery_report, free_port, poll
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from smtp_policy.lab.remote import ScriptedServer
from tests.helpers import Daemon, bounce_template
from tests.integration.drills import size

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

SENDER = "sender@local.test"
#: Longer than the worst hung case: 2 policy tries of 5 s, 1 s apart, then a 100 s footer lookup.
CLIENT_TIMEOUT = 300.0
#: Main.cf parameters taken from the recommended lines (the milter is drills 1 and 2).
RECOMMENDED = (
    "smtpd_reject_footer_maps",
    "smtp_delivery_status_filter",
    "lmtp_delivery_status_filter",
    "bounce_template_file",
    "smtpd_recipient_restrictions",
)
_FATAL = re.compile(r"postfix(?:/[\w.-]+)*\[\d+\]: (?:fatal|panic|error): ")
_WARNING = re.compile(r"postfix(?:/[\w.-]+)*\[\d+\]: warning: (.*)")


@dataclass(frozen=True)
class Kind:
    """One kind of message in the stream."""

    name: str
    trusted: bool  #: the trusted listener (mynetworks) or the untrusted one
    rcpt: str  #: recipient template; ``{tag}`` is the message's tag
    footer: bool  #: whether Postfix rejects it (and a footer is looked up)


KINDS = (
    Kind("unknown", True, "nosuchuser-{tag}@local.test", footer=True),
    Kind("relay-denied", False, "{tag}@elsewhere.test", footer=True),
    Kind("local-policy", False, "alice@local.test", footer=False),
    Kind("remote", True, "ok-{tag}@remote.test", footer=False),
    Kind("bounced", True, "nouser@remote.test", footer=False),
    Kind("unknown-policy", False, "nosuchuser-{tag}@local.test", footer=True),
    Kind("local", True, "bob@local.test", footer=False),
)


@dataclass
class Outcome:
    """One SMTP session of the stream."""

    kind: Kind
    tag: str
    started: str  #: the drill's state when the session began
    ended: str = ""  #: ... and when it ended
    rcpt_code: int = 0
    rcpt_text: str = ""
    data_code: int | None = None
    data_text: str = ""
    queue_id: str | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def clean(self) -> str | None:
        """The state the whole session ran in, or None if it straddled a change."""
        return self.started if self.started == self.ended else None

    @property
    def has_footer(self) -> bool:
        """Whether the RCPT reply has lines after Postfix's own one."""
        return len(self.rcpt_text.splitlines()) > 1

    def signature(self) -> tuple[int, str, int | None, str]:
        """Codes and first lines, with the tag and queue id masked."""

        def first(text: str) -> str:
            line = text.splitlines()[0] if text else ""
            return re.sub(r"queued as \w+", "queued as *", line.replace(self.tag, "*"))

        return self.rcpt_code, first(self.rcpt_text), self.data_code, first(self.data_text)


class Load:
    """A steady stream of messages, one SMTP session each, from a pool of client threads."""

    def __init__(self, pf: PrivatePostfix, workers: int = 128) -> None:
        self.pf = pf
        self.state = "up"
        self.outcomes: list[Outcome] = []
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drill3")
        self._futures: list[Future[Outcome]] = []
        self._count = 0
        self._lock = threading.Lock()

    def send(self, count: int, interval: float) -> list[Future[Outcome]]:
        """Start ``count`` sessions, one every ``interval`` s, cycling through KINDS."""
        started = []
        for _ in range(count):
            started.append(self._submit())
            time.sleep(interval)
        return started

    def send_until(self, done: Callable[[], bool], interval: float, timeout: float) -> int:
        """Keep starting sessions every ``interval`` s until ``done()``; return how many."""
        count = 0

        def one_more() -> int | None:
            nonlocal count
            if done():
                return count
            self._submit()
            count += 1
            return None

        return poll(
            one_more,
            timeout,
            lambda: f"done() to hold; {count} sessions started",
            interval=interval,
        )

    def drain(self) -> list[Outcome]:
        """Wait for every session; all outcomes in start order."""
        for future in self._futures:
            future.result(timeout=CLIENT_TIMEOUT + 60)
        self._pool.shutdown()
        return self.outcomes

    def _submit(self) -> Future[Outcome]:
        with self._lock:
            number = self._count
            self._count += 1
        outcome = Outcome(KINDS[number % len(KINDS)], f"d3m{number:05d}", self.state)
        self.outcomes.append(outcome)
        future = self._pool.submit(self._session, outcome)
        self._futures.append(future)
        return future

    def _session(self, out: Outcome) -> Outcome:
        port = self.pf.smtp_port if out.kind.trusted else self.pf.untrusted_port
        rcpt = out.kind.rcpt.format(tag=out.tag)
        body = f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: drill3 {out.tag}\r\n\r\n{out.tag}\r\n"
        began = time.monotonic()
        try:
            with smtplib.SMTP(
                "127.0.0.1", port, local_hostname="client.test", timeout=CLIENT_TIMEOUT
            ) as smtp:
                smtp.ehlo()
                smtp.mail(SENDER)
                out.rcpt_code, text = smtp.rcpt(rcpt)
                out.rcpt_text = text.decode()
                if out.rcpt_code == 250:
                    out.data_code, reply = smtp.data(body.encode())
                    out.data_text = reply.decode()
                    m = re.search(r"queued as ([0-9A-F]+)", out.data_text)
                    out.queue_id = m[1] if m else None
        except (OSError, smtplib.SMTPException) as exc:
            out.error = repr(exc)
        out.seconds = time.monotonic() - began
        out.ended = self.state
        return out


def recommended_main_cf(tmp: Path, config: Path) -> dict[str, str]:
    """The maps, policy and bounce lines of ``smtp-policy postfix-config --with-policy --print-snippet``."""
    template = bounce_template(tmp / "bounce.cf")
    smtp_policy = [sys.executable, "-m", "smtp_policy"]
    printed = subprocess.run(
        [
            *smtp_policy,
            "postfix-config",
            "--config",
            str(config),
            "--with-policy",
            "--print-snippet",
            "--bounce-template",
            str(template),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    settings: dict[str, str] = {}
    name = ""
    for line in printed.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():  # a continuation line
            settings[name] += " " + line.strip()
            continue
        name, _, value = line.partition("=")
        name = name.strip()
        settings[name] = value.strip()
    return {k: settings[k] for k in RECOMMENDED}


@pytest.fixture(name="daemons")
def _daemons(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon, Path]]:
    """The maps and policy servers on free ports, and the config naming them."""
    maps_port, policy_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[maps]\nlisten = "inet:127.0.0.1:{maps_port}"\n'
        f'[policy]\nlisten = "inet:127.0.0.1:{policy_port}"\n'
    )
    maps = Daemon("maps", tmp_path, "--config", str(config), port=maps_port)
    policy = Daemon("policy", tmp_path, "--config", str(config), port=policy_port)
    maps.start()
    policy.start()
    try:
        yield maps, policy, config
    finally:
        for daemon in (maps, policy):
            if daemon.proc is not None:  # the test failed before stopping it
                daemon.kill()


def bounces(pf: PrivatePostfix) -> dict[str, EmailMessage]:
    """The sender's bounce messages by the queue id they report on."""
    found: dict[str, EmailMessage] = {}
    for msg in pf.mailbox("sender"):
        report = delivery_report(msg)
        qid = report.message.get("X-Postfix-Queue-ID") if report else None
        assert qid is not None and qid not in found, f"unexpected mail for sender: {msg}"
        found[qid] = msg
    return found


def bounce_text(msg: EmailMessage) -> str:
    """The bounce's human-readable part, whitespace collapsed."""
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return " ".join(str(part.get_content()).split())


def lookups(maps: Daemon, policy: Daemon) -> Counter[str]:
    """Footer and DSN lookups, and policy requests, recorded so far."""
    counts: Counter[str] = Counter()
    for e in maps.events.read():
        if e["event"] == "lookup":
            counts[e["map"]] += 1
    counts["policy"] = sum(e["event"] == "policy_request" for e in policy.events.read())
    return counts


def test_maps_and_policy_down_and_hung_under_load(
    daemons: tuple[Daemon, Daemon, Path],
    scripted_server: ScriptedServer,
    make_postfix: PostfixFactory,
    tmp_path: Path,
    drill_report: Callable[[str], None],
) -> None:
    """Killed, then hung, under a steady stream: same codes without footers, no mail lost,
    warnings only, and everything comes back."""
    maps, policy, config = daemons
    main_cf = recommended_main_cf(tmp_path, config)
    assert "default_action=DUNNO" in main_cf["smtpd_recipient_restrictions"]
    pf = make_postfix(downstream_port=scripted_server.port, main_cf=main_cf)
    per_phase = size(ci=28, full=280)
    load = Load(pf)
    seen: dict[str, Counter[str]] = {}
    marks: dict[str, float] = {}

    def phase(state: str, run: Callable[[], object]) -> None:
        before = lookups(maps, policy)
        load.state = state
        marks[state] = time.monotonic()
        run()
        seen[state] = lookups(maps, policy) - before

    # Both daemons up: the baseline every other phase is compared with.
    phase("up", lambda: load.send(per_phase, 0.05))
    load.state = "killing"
    maps.kill()
    policy.kill()
    phase("down", lambda: load.send(per_phase, 0.05))
    load.state = "restarting"
    maps.start()
    policy.start()
    phase("up after down", lambda: load.send(per_phase, 0.05))

    load.state = "stopping"
    maps.pause()
    policy.pause()
    burst: list[Future[Outcome]] = []

    def hung() -> None:
        # A burst, then a trickle until every session of the burst has had its answer:
        # that takes Postfix's 100 s socketmap timeout (plus the policy service's retries).
        burst.extend(load.send(size(ci=14, full=42), 0.1))
        load.send_until(
            lambda: all(f.done() for f in burst), size(ci=2, full=1), CLIENT_TIMEOUT + 60
        )

    phase("hung", hung)
    hung_seconds = time.monotonic() - marks["hung"]
    load.state = "resuming"
    cont_at = datetime.now(UTC)
    maps.resume()
    policy.resume()
    phase("up after hung", lambda: load.send(per_phase, 0.05))
    outcomes = load.drain()
    pf.wait_queue_empty(timeout=300)

    # 1. Every session completed, and each kind got the same replies in every phase.
    assert not [o for o in outcomes if o.error], [o for o in outcomes if o.error]
    baseline = {o.kind.name: o.signature() for o in outcomes if o.clean == "up"}
    assert set(baseline) == {k.name for k in KINDS}
    differ = [o for o in outcomes if o.signature() != baseline[o.kind.name]]
    assert not differ, [(o.kind.name, o.started, o.signature()) for o in differ[:5]]
    assert baseline["local-policy"][:3:2] == (250, 250)  # so the policy service failed open
    assert baseline["unknown"][:2] == baseline["unknown-policy"][:2]

    # 2. Footers: with both daemons up, always; down or hung, never.
    by_state: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_state.setdefault(o.clean or "transition", []).append(o)
    for state, group in by_state.items():
        rejected = [o for o in group if o.kind.footer]
        with_footer = sum(o.has_footer for o in rejected)
        if state.startswith("up"):
            assert with_footer == len(rejected) > 0, state
        elif state in ("down", "hung"):
            assert with_footer == 0 < len(rejected), state

    # 3. No mail lost, none duplicated: every accepted message reached its place once.
    accepted = [o for o in outcomes if o.queue_id]
    subject = re.compile(r"^Subject: drill3 (\w+)", re.MULTILINE)
    delivered = Counter(
        str(m["Subject"]).split()[-1] for user in ("alice", "bob") for m in pf.mailbox(user)
    )
    downstream = Counter(
        m[1] for t in scripted_server.messages if (m := subject.search((t.data or b"").decode()))
    )
    bounced = bounces(pf)
    expected = {
        "local": {o.tag for o in accepted if o.kind.name in ("local", "local-policy")},
        "remote": {o.tag for o in accepted if o.kind.name == "remote"},
        "bounced": {str(o.queue_id) for o in accepted if o.kind.name == "bounced"},
    }
    assert delivered == Counter(expected["local"])
    assert downstream == Counter(expected["remote"])
    assert set(bounced) == expected["bounced"]
    for msg in bounced.values():
        report = delivery_report(msg)
        assert report is not None
        (rcpt,) = report.recipients
        assert (rcpt["Status"], rcpt["Action"]) == ("5.1.1", "failed"), rcpt

    # 4. The log: warnings about both daemons, nothing worse.
    log = pf.maillog_lines()
    assert not [line for line in log if _FATAL.search(line)]
    warnings = [m[1] for line in log if (m := _WARNING.search(line))]
    print("\n".join(sorted({re.sub(r"\d+", "N", w) for w in warnings})))
    about_maps = [w for w in warnings if "socketmap" in w or f":{maps.port}:" in w]
    about_policy = [w for w in warnings if f":{policy.port}:" in w and w not in about_maps]
    other = sorted({w for w in warnings if w not in about_maps and w not in about_policy})
    assert about_maps and about_policy
    timeouts = [w for w in about_maps if re.search(r"time limit exceeded|timed out", w)]
    assert timeouts, about_maps

    # 5. Back: footers (checked above), DSN lookups and policy requests after each return.
    for state in ("up after down", "up after hung"):
        assert seen[state]["footer"] > 0 and seen[state]["policy"] > 0, (state, seen[state])
    later = [
        e
        for e in maps.events.read()
        if e.get("map") == "dsn" and datetime.fromisoformat(e["ts"]) > cont_at
    ]
    assert later, "no DSN lookup after the maps server resumed"
    friendly = [o for o in accepted if o.kind.name == "bounced" and o.clean == "up after hung"]
    assert friendly
    for o in friendly:
        assert "address does not exist" in bounce_text(bounced[str(o.queue_id)]), o
    plain = sum("address does not exist" not in bounce_text(m) for m in bounced.values())

    maps.stop()
    policy.stop()

    # Report.
    def seconds(state: str, kind: str) -> str:
        times = [o.seconds for o in by_state.get(state, []) if o.kind.name == kind]
        return f"{statistics.median(times):.1f}s" if times else "-"

    counts = " ".join(f"{state}={len(group)}" for state, group in by_state.items())
    drill_report(
        f"{len(outcomes)} sessions ({counts}); {len(accepted)} accepted, "
        f"{sum(delivered.values())} delivered locally, {sum(downstream.values())} downstream, "
        f"{len(bounced)} bounced ({plain} without the DSN filter's text); 0 lost, 0 duplicated"
    )
    drill_report(
        f"hung {hung_seconds:.0f}s: median RCPT reply unknown user {seconds('hung', 'unknown')} "
        f"(footer lookup timeout), local via policy {seconds('hung', 'local-policy')} "
        f"(policy timeout=5s x2 tries), down: local via policy "
        f"{seconds('down', 'local-policy')}; up: {seconds('up', 'local-policy')}"
    )
    drill_report(
        f"maillog: {len(about_maps)} socketmap warnings ({len(timeouts)} timeouts), "
        f"{len(about_policy)} policy warnings, {len(other)} other distinct warnings "
        f"{other[:3]}, 0 fatal/error; "
        f"lookups per phase: "
        + "; ".join(f"{s}: {dict(sorted(c.items()))}" for s, c in seen.items())
    )
