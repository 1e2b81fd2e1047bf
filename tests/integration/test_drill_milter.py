"""Failure drills 1 and 2 of issue 7: the milter killed (SIGKILL) and hung (SIGSTOP) under load,
beside a real private Postfix on loopback. Each drill prints its counts through ``drill_report``.

The load is a Python client (``smtp-source`` sends identical messages): concurrent sessions of
several messages each, every message with its own sender ``<uid>@local.test`` and one recipient,
every reply kept per message. Deliveries are counted in the maillog of a discard-mode Postfix:
qmgr's ``QID: from=<uid@local.test>`` ties a queue id to its message, each ``QID: to=<...>, ...
status=sent`` is one delivery. A message accepted and never delivered (lost), delivered twice,
or queued twice (duplicated) is seen by its uid.

Every session sends each kind: ``ok`` (to alice@local.test), ``unknown``
(nobody-<uid>@local.test: Postfix's own ``550 5.1.1``) and ``policy``
(mallory-<uid>@remote.test: the milter's rule answers ``550 5.7.1``; Postfix alone accepts it).
"As without the milter" is measured, not assumed: the kinds first go through a listener of the
same Postfix with ``-o smtpd_milters=`` (the baseline).

TRAP: smtpd connects to its milters (and negotiates) *before* it sends the 220 greeting; a
session that could not reach the milter then goes on without it even if the milter comes back.
So whether a session had the milter is decided between the client's connect() and the 220.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import signal
import smtplib
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from smtp_policy.lab.instance import free_port, poll
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from tests.integration.drills import size
from tests.integration.test_milter_postfix import Ev, MilterProcess

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

OK, UNKNOWN, POLICY = "ok", "unknown", "policy"
#: The kinds of a session's messages, in order: a session of 5 has one of each refusal.
PATTERN = (OK, UNKNOWN, OK, POLICY, OK)
RULE = "drill-no-mallory"
#: The milter's one rule: recipients mallory-*@remote.test are refused at RCPT.
CONFIG = f"""
[[rules]]
name = "{RULE}"
stage = "rcpt"
recipient = ["mallory-*@remote.test"]
action = "reject"
code = 550
enhanced = "5.7.1"
reason = "policy_violation"
text = "Mail to {{recipient}} is not accepted here."
"""
Verdict = tuple[str, int, str]  # (command, code, enhanced code) of the reply that decided
POLICY_VERDICT: Verdict = ("RCPT", 550, "5.7.1")
#: Only Postfix's "something broke" notices: ``bounce`` would add a postmaster transcript for
#: every refused session of the drill.
NOTIFY = {"notify_classes": "resource, software"}
CLIENT_TIMEOUT = 180.0  # seconds a client waits for one reply: the machine is shared
LOAD_WAIT = 300.0  # seconds a drill waits for a point of its run (the load, the hang)
_MILTER_WARNING = re.compile(r"warning: (connect to Milter service|milter) unix:")


# -- the load generator -----------------------------------------------------------------------


@dataclass(eq=False)
class Session:
    """One client SMTP session: its messages and when it ran (``time.monotonic()``)."""

    messages: list[Message]
    start: float = math.inf  # before connect()
    greeted: float = math.inf  # the 220 arrived: smtpd has connected to its milter, or not
    end: float = math.inf  # after QUIT's reply, or the error
    error: str | None = None


@dataclass(eq=False)
class Message:
    """One message with a unique sender: the replies of its last attempt, and every 4xx."""

    uid: str
    kind: str
    session: Session | None = None  # of the last attempt
    replies: list[tuple[str, int, str]] = field(default_factory=list)  # (command, code, text)
    queue_id: str | None = None  # from "250 2.0.0 Ok: queued as QID"
    transient: list[tuple[Session, str, int, str]] = field(default_factory=list)  # every 4xx
    uncertain: bool = False  # the connection broke after the final dot: outcome unknown
    done: float = math.inf  # when its last reply came

    @property
    def sender(self) -> str:
        """The envelope sender, unique to this message."""
        return f"{self.uid}@local.test"

    @property
    def recipient(self) -> str:
        """The one recipient; its kind decides what Postfix and the milter answer."""
        return {
            OK: "alice@local.test",
            UNKNOWN: f"nobody-{self.uid}@local.test",
            POLICY: f"mallory-{self.uid}@remote.test",
        }[self.kind]

    @property
    def body(self) -> bytes:
        """The message; its headers name it too."""
        return (
            f"From: <{self.sender}>\r\nTo: <{self.recipient}>\r\nSubject: drill {self.uid}\r\n"
            f"Message-ID: <{self.uid}@drill.test>\r\n\r\n{self.uid}\r\n"
        ).encode()

    @property
    def verdict(self) -> Verdict | None:
        """The deciding reply: the first refusal, or the end-of-data reply; None if unsent."""
        for command, code, text in self.replies:
            if code >= 400 or command == "EOM":
                return command, code, text.split(" ", 1)[0]
        return None

    @property
    def text(self) -> str:
        """The deciding reply's text, the message's own recipient replaced by ``ADDR``."""
        texts = [t for c, code, t in self.replies if code >= 400 or c == "EOM"]
        return texts[0].replace(self.recipient, "ADDR") if texts else ""

    @property
    def accepted(self) -> bool:
        """Postfix took responsibility for it (a queue id came back)."""
        return self.queue_id is not None

    @property
    def rejected(self) -> bool:
        """Refused for good (5xx)."""
        verdict = self.verdict
        return verdict is not None and verdict[1] >= 500


def make_messages(prefix: str, count: int, kinds: Sequence[str] = PATTERN) -> list[Message]:
    """``count`` messages ``<prefix>-00000``..., their kinds cycling through ``kinds``."""
    return [Message(f"{prefix}-{i:05d}", kinds[i % len(kinds)]) for i in range(count)]


class Load:
    """Sends messages over ``concurrency`` parallel SMTP sessions of ``per_session`` messages.

    ``hold()`` makes new sessions wait (open ones go on) until ``release()``.
    """

    def __init__(
        self, port: int, messages: Sequence[Message], *, concurrency: int, per_session: int
    ) -> None:
        self.port = port
        self.sessions = [
            Session(list(messages[i : i + per_session]))
            for i in range(0, len(messages), per_session)
        ]
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="drill-smtp")
        self._futures: list[Future[None]] = []
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._gate.set()
        self.completed = 0  # messages with a final reply

    def start(self) -> Load:
        """Start sending in the background."""
        self._futures = [self._pool.submit(self._run, s) for s in self.sessions]
        return self

    def wait(self, timeout: float = 600.0) -> None:
        """Wait until every session ended."""
        self.release()
        try:
            poll(lambda: self.finished or None, timeout, self._unfinished)
            for future in self._futures:
                future.result()  # raises what a session raised
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def run(self, timeout: float = 600.0) -> Load:
        """Send everything and wait."""
        self.start().wait(timeout)
        return self

    @property
    def finished(self) -> bool:
        """Every session has ended."""
        return all(f.done() for f in self._futures)

    def _unfinished(self) -> str:
        return f"every session to end; {sum(not f.done() for f in self._futures)} still running"

    def hold(self) -> None:
        """New sessions wait from now on."""
        self._gate.clear()

    def release(self) -> None:
        """New sessions go ahead."""
        self._gate.set()

    def count(self, predicate: Callable[[Session], bool]) -> int:
        """Sessions that satisfy ``predicate`` now."""
        return sum(1 for s in self.sessions if predicate(s))

    def _run(self, session: Session) -> None:
        self._gate.wait()
        session.start = time.monotonic()
        try:
            with smtplib.SMTP(
                "127.0.0.1", self.port, local_hostname="drill.test", timeout=CLIENT_TIMEOUT
            ) as smtp:
                session.greeted = time.monotonic()
                smtp.ehlo()
                for message in session.messages:
                    if mail(smtp, session, message):
                        finish(smtp, session, message)
                    with self._lock:
                        self.completed += 1
        except OSError as exc:  # smtplib's errors are OSErrors too
            session.error = f"{type(exc).__name__}: {exc}"
        finally:
            session.end = time.monotonic()


def _step(session: Session, message: Message, command: str, reply: tuple[int, bytes]) -> bool:
    """Record one reply; True if the transaction goes on."""
    code, raw = reply
    text = raw.decode("utf-8", "replace")
    message.replies.append((command, code, text))
    message.done = time.monotonic()
    if 400 <= code < 500:
        message.transient.append((session, command, code, text))
    return code < 400


def mail(smtp: smtplib.SMTP, session: Session, message: Message) -> bool:
    """A new attempt: MAIL FROM. True if it was accepted."""
    message.session, message.replies, message.queue_id = session, [], None
    if _step(session, message, "MAIL", smtp.mail(message.sender)):
        return True
    smtp.rset()
    return False


def finish(smtp: smtplib.SMTP, session: Session, message: Message) -> None:
    """RCPT and DATA (unless sent already), then the message; RSET after a refusal."""
    steps: list[tuple[str, Callable[[], tuple[int, bytes]]]] = [
        ("RCPT", lambda: smtp.rcpt(message.recipient)),
        ("DATA", lambda: smtp.docmd("DATA")),
    ]
    sent = {command for command, _, _ in message.replies}
    for command, send in steps:
        if command not in sent and not _step(session, message, command, send()):
            smtp.rset()
            return
    message.uncertain = True  # until the reply to the final dot arrives
    smtp.send(message.body + b".\r\n")
    reply = smtp.getreply()
    message.uncertain = False
    if _step(session, message, "EOM", reply):
        queued = re.search(r"queued as ([0-9A-F]+)", reply[1].decode("ascii", "replace"))
        message.queue_id = queued.group(1) if queued else None


def send_all(port: int, messages: Sequence[Message]) -> Load:
    """All ``messages`` in one session."""
    return Load(port, messages, concurrency=1, per_session=len(messages)).run()


def retry_unfinished(port: int, messages: Sequence[Message]) -> list[Message]:
    """Send again, as a real client would, every message left with a 4xx or never sent."""
    again = [m for m in messages if not (m.accepted or m.rejected) and not m.uncertain]
    if again:
        Load(port, again, concurrency=min(len(again), 5), per_session=1).run()
    return again


# -- expectations and accounting --------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """The verdicts without the milter (measured) and with it (the rule refuses ``policy``)."""

    without: dict[str, Verdict]
    unknown_text: str  # Postfix's own refusal of an unknown user, address as ADDR

    @classmethod
    def measure(cls, nomilter_port: int) -> Expect:
        """Send each kind through the listener without the milter."""
        messages = make_messages("baseline", len(PATTERN))
        send_all(nomilter_port, messages)
        without = {m.kind: v for m in messages if (v := m.verdict) is not None}
        assert without == {
            OK: ("EOM", 250, "2.0.0"),
            UNKNOWN: ("RCPT", 550, "5.1.1"),
            POLICY: ("EOM", 250, "2.0.0"),
        }, without
        return cls(without, next(m.text for m in messages if m.kind == UNKNOWN))

    @property
    def with_milter(self) -> dict[str, Verdict]:
        """The verdicts while the milter serves."""
        return {**self.without, POLICY: POLICY_VERDICT}

    def check(self, m: Message, allowed: set[Verdict]) -> None:
        """The verdict is one of ``allowed``; refusals read as Postfix's and the rule's."""
        assert m.verdict in allowed, (m.uid, m.kind, m.replies, allowed)
        if m.verdict == self.without[UNKNOWN]:
            assert m.text == self.unknown_text, (m.uid, m.replies)
        if m.verdict == POLICY_VERDICT:
            assert m.text.endswith("Mail to ADDR is not accepted here."), m.replies


_FROM = re.compile(r": ([0-9A-F]+): from=<([^>@]*)@local\.test>, size=")
_STATUS = re.compile(r": ([0-9A-F]+): to=<[^>]*>, .* status=(\w+)")


def wait_delivered(pf: PrivatePostfix, messages: Sequence[Message], timeout: float = 240) -> None:
    """Wait until every accepted message has a delivery line and the queue is empty."""
    accepted = {m.queue_id for m in messages if m.queue_id}

    def delivered() -> set[str]:
        return {
            hit[1]
            for line in pf.maillog_lines()
            if (hit := _STATUS.search(line)) and hit[2] == "sent"
        }

    poll(
        lambda: accepted <= delivered() or None,
        timeout,
        lambda: (
            f"every accepted message delivered; not delivered: {sorted(accepted - delivered())}"
        ),
        interval=0.2,
    )
    pf.wait_queue_empty(timeout)


def check_delivered_once(pf: PrivatePostfix, messages: Sequence[Message]) -> Counter[str]:
    """Every accepted message delivered exactly once, under the queue id its client got; none
    refused delivered; no other status. Returns the counts: delivered, lost, duplicates."""
    wait_delivered(pf, messages)
    uids = {m.uid for m in messages}
    lines = pf.maillog_lines()
    owner = {hit[1]: hit[2] for line in lines if (hit := _FROM.search(line)) and hit[2] in uids}
    sent: dict[str, list[str]] = {}  # uid -> queue id per delivery
    for line in lines:
        if (hit := _STATUS.search(line)) and hit[1] in owner:
            assert hit[2] == "sent", line
            sent.setdefault(owner[hit[1]], []).append(hit[1])
    counts: Counter[str] = Counter()
    for m in messages:
        got = sent.get(m.uid, [])
        counts["delivered"] += len(got)
        counts["lost"] += m.accepted and not got
        counts["duplicates"] += len(got) - 1 if m.accepted and got else len(got)
    assert counts["lost"] == 0, [m.uid for m in messages if m.accepted and m.uid not in sent]
    assert counts["duplicates"] == 0, {u: q for u, q in sent.items() if len(q) > 1}
    for m in messages:
        assert sent.get(m.uid, []) == ([m.queue_id] if m.accepted else []), (m.uid, m.replies)
    return counts


def eom_queue_ids(events: Sequence[Ev]) -> set[str]:
    """Queue ids the milter saw at end of message."""
    return {e["queue_id"] for e in events if e["event"] == "stage" and e["stage"] == "eom"}


def policy_refusals(events: Sequence[Ev]) -> set[str]:
    """Recipients (without brackets) the milter's rule refused."""
    return {
        str(e.get("recipient")).strip("<>")
        for e in events
        if e["event"] == "reply" and e.get("rule") == RULE
    }


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(name="sockdir")
def _sockdir() -> Iterator[Path]:
    """A directory smtpd (user postfix) can reach, for the milter's unix socket."""
    path = Path(tempfile.mkdtemp(prefix="smtp-policy-drill-"))
    path.chmod(0o755)  # tmp_path is 0700
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="milter")
def _milter(tmp_path: Path, sockdir: Path) -> Iterator[MilterProcess]:
    """The milter with the drill's rule, on a unix socket; never left stopped (SIGSTOP)."""
    (tmp_path / "config.toml").write_text(CONFIG)
    proc = MilterProcess(
        tmp_path, "--config", str(tmp_path / "config.toml"), socket_path=sockdir / "milter.sock"
    ).start(timeout=120)
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.proc.send_signal(signal.SIGCONT)
    proc.stop()


@pytest.fixture(name="nomilter_port")
def _nomilter_port() -> int:
    return free_port()


def start_postfix(
    make_postfix: PostfixFactory, nomilter_port: int, milters: str, **main_cf: str
) -> PrivatePostfix:
    """A discard-mode Postfix with ``milters``, plus a listener without them (the baseline)."""
    return make_postfix(
        discard=True,
        milters=milters,
        main_cf={**NOTIFY, **main_cf},
        master_cf=[f"127.0.0.1:{nomilter_port} inet n - n - - smtpd -o smtpd_milters="],
    )


# -- drill 1: killed --------------------------------------------------------------------------

MESSAGES = size(ci=1000, full=5000)
CONCURRENCY = 10
PER_SESSION = len(PATTERN)


def test_milter_killed_under_load_loses_nothing(
    milter: MilterProcess,
    make_postfix: PostfixFactory,
    nomilter_port: int,
    drill_report: Callable[[str], None],
) -> None:
    """Drill 1: SIGKILL the milter after a fifth of a MESSAGES-message run, restart it later.

    What each session may get depends on when smtpd reached for the milter (connect to 220):

    * ``before`` (ended before the kill), ``after`` (connected once the new milter was ready):
      the milter's verdicts: ok accepted, unknown refused by Postfix (``550 5.1.1`` with the
      baseline's text), policy refused by the rule (``550 5.7.1``);
    * ``dead`` (connected after the kill, greeted before the restart began): the baseline's,
      policy accepted too: the milter's rules apply only while it runs; smtpd fails open
      (``default_action=accept``) and keeps the session without the milter;
    * ``kill`` (open across the kill) or ``restart`` (greeted while it restarted): either.

    New sessions wait while the milter restarts (open ones go on), so ``after`` is never empty.
    Postfix's own refusals never change. Every accepted message is delivered exactly once,
    none refused is delivered. A 4xx may only reach a session open at the kill, one at most
    (none is expected: ``default_action=accept``); a client sends those again. The restarted
    milter replaces the stale unix socket and records the sessions after it: every accepted
    message's end of data, every rule refusal.
    """
    pf = start_postfix(make_postfix, nomilter_port, milter.postfix_milters)
    expect = Expect.measure(nomilter_port)
    log_mark = len(pf.maillog_lines())
    messages = make_messages("d1", MESSAGES)
    began = time.monotonic()
    load = Load(pf.smtp_port, messages, concurrency=CONCURRENCY, per_session=PER_SESSION)
    try:
        load.start()
        poll(
            lambda: load.completed >= MESSAGES // 5 or None,
            LOAD_WAIT,
            lambda: "a fifth of the load",
            unless=lambda: load.finished,
        )
        kill_from, killed_at = time.monotonic(), time.time()
        milter.kill()
        kill_to = time.monotonic()
        completed_at_kill = load.completed
        poll(
            lambda: (
                (
                    load.completed >= completed_at_kill + MESSAGES // 10
                    and load.count(lambda s: kill_to < s.start and s.greeted < math.inf)
                    >= CONCURRENCY
                )
                or None
            ),
            LOAD_WAIT,
            lambda: "sessions without the milter",
            unless=lambda: load.finished,
        )
        load.hold()
        restart_from = time.monotonic()
        milter.start(timeout=120)  # the stale socket file is replaced
        ready = time.monotonic()
        assert milter.socket_path is not None
        assert milter.socket_path.stat().st_mode & 0o777 == 0o666  # smtpd (postfix) connects
        load.release()
    finally:
        load.wait()
    retried = retry_unfinished(pf.smtp_port, messages)
    elapsed = time.monotonic() - began

    def phase(s: Session) -> str:
        if s.end < kill_from:
            return "before"
        if s.start < kill_to:
            return "kill"
        if s.greeted < restart_from:
            return "dead"
        return "after" if s.start > ready else "restart"

    both = {k: {expect.without[k], expect.with_milter[k]} for k in PATTERN}
    allowed: dict[str, dict[str, set[Verdict]]] = {
        "before": {k: {expect.with_milter[k]} for k in PATTERN},
        "after": {k: {expect.with_milter[k]} for k in PATTERN},
        "dead": {k: {expect.without[k]} for k in PATTERN},
        "kill": both,
        "restart": both,
    }
    assert not [m.uid for m in messages if m.uncertain], "a connection broke after the dot"
    assert [s.error for s in load.sessions if s.error] == []
    for m in messages:
        assert m.session is not None, m.uid
        expect.check(m, allowed[phase(m.session)][m.kind])
    counts = check_delivered_once(pf, messages)

    open_at_kill = [s for s in load.sessions if s.start < kill_to and s.end > kill_from]
    transient = [t for m in messages for t in m.transient]
    assert all(t[0] in open_at_kill for t in transient), transient
    assert len({id(t[0]) for t in transient}) == len(transient), transient

    events = milter.events.read()
    restarted = [i for i, e in enumerate(events) if e["event"] == "started"][-1]
    sessions_before = sum(e["event"] == "session" for e in events[:restarted])
    sessions_after = sum(e["event"] == "session" for e in events[restarted:])
    seen_eom, refused = eom_queue_ids(events), policy_refusals(events)
    for m in messages:
        assert m.session is not None
        if phase(m.session) in ("before", "after") and m.accepted:
            assert m.queue_id in seen_eom, f"{m.uid}: the milter has no eom for {m.queue_id}"
        if m.verdict == POLICY_VERDICT:
            assert m.recipient in refused, f"{m.uid}: refused, but the milter has no event"
    phases = Counter(phase(s) for s in load.sessions)
    assert phases["before"] and phases["dead"] and phases["after"], phases
    assert sessions_before > 0 and sessions_after > 0, (sessions_before, sessions_after)
    served_again = min(
        datetime.fromisoformat(e["ts"]).timestamp()
        for e in events[restarted:]
        if e["event"] == "stage" and e.get("stage") == "connect"
    )
    warnings = pf.log_matches(_MILTER_WARNING, since=log_mark)
    drill_report(
        f"sent {len(messages)} in {len(load.sessions)} sessions ({CONCURRENCY} concurrent); "
        f"accepted {sum(m.accepted for m in messages)} (policy kind while the milter was away: "
        f"{sum(m.kind == POLICY and m.accepted for m in messages)}), rejected "
        f"{sum(m.rejected for m in messages)} (Postfix 5.1.1: "
        f"{sum(m.verdict == expect.without[UNKNOWN] for m in messages)}, rule 5.7.1: "
        f"{sum(m.verdict == POLICY_VERDICT for m in messages)}); delivered "
        f"{counts['delivered']}, lost {counts['lost']}, duplicates {counts['duplicates']}; "
        f"4xx seen {len(transient)}, sessions open at kill {len(open_at_kill)}, retried "
        f"{len(retried)}; Postfix milter warnings {len(warnings)}; sessions "
        + "/".join(f"{p} {phases[p]}" for p in ("before", "kill", "dead", "restart", "after"))
        + f"; milter sessions seen before kill {sessions_before}, after restart "
        f"{sessions_after}; restart took {ready - restart_from:.1f}s, kill to first session "
        f"served again {served_again - killed_at:.1f}s; load ran {elapsed:.1f}s"
    )


# -- drill 2: hung ----------------------------------------------------------------------------

HANG_TIMEOUT = 5  # seconds: milter_{connect,command,content}_timeout
HANG_MESSAGES = size(ci=20, full=100)
HANG_CONCURRENCY = 5
OPEN_AT_STOP = 3  # sessions caught mid-transaction by the stop, one per position
_TIMED_OUT = re.compile(r"warning: milter unix:\S+: can't read (\w+) reply .*timed out")


def test_milter_hung_postfix_times_out_and_mail_flows(
    milter: MilterProcess,
    make_postfix: PostfixFactory,
    nomilter_port: int,
    drill_report: Callable[[str], None],
) -> None:
    """Drill 2: SIGSTOP the milter for three times Postfix's milter timeouts, then SIGCONT.

    main.cf: ``milter_default_action = accept`` (as ``smtp-policy postfix-config`` has it)
    and ``milter_{connect,command,content}_timeout = HANG_TIMEOUT``. While it is stopped,
    sessions open at the stop (after MAIL FROM: their RCPT waits; after RCPT TO: their DATA
    waits, or their end of data under ``--noreply on``; after DATA's 354: their end of data
    waits, the content timeout) and new ones (their negotiation waits: the connect timeout)
    each log one timeout warning and go on without the milter: every message gets the
    baseline's verdict, no 4xx, and every accepted message is delivered exactly once before
    the milter resumes. After SIGCONT: the sessions Postfix abandoned end in a summary each,
    the next session is served (the rule refuses again, every stage recorded), there is no
    traceback on stderr, and the milter stops cleanly with no session left open.
    """
    timeouts = {
        f"milter_{t}_timeout": f"{HANG_TIMEOUT}s" for t in ("connect", "command", "content")
    }
    assert milter.socket_path is not None and milter.proc is not None
    pf = start_postfix(
        make_postfix,
        nomilter_port,
        f"unix:{milter.socket_path}",
        milter_default_action="accept",
        milter_protocol="6",
        **timeouts,
    )
    expect = Expect.measure(nomilter_port)
    warmup = make_messages("d2-warm", len(PATTERN))
    send_all(pf.smtp_port, warmup)
    for m in warmup:
        expect.check(m, {expect.with_milter[m.kind]})
    milter.wait_for(lambda e: e["event"] == "session" and bool(e["queue_ids"]), timeout=60)
    sessions_before = len(milter.events.of("session"))

    pending = make_messages("d2-open", OPEN_AT_STOP, kinds=(OK,))
    clients = []
    for i, m in enumerate(pending):  # stopped after MAIL FROM, after RCPT TO, after DATA's 354
        smtp = smtplib.SMTP("127.0.0.1", pf.smtp_port, "drill.test", CLIENT_TIMEOUT)
        clients.append(smtp)
        smtp.ehlo()
        m.session = Session([m], start=time.monotonic())
        assert mail(smtp, m.session, m), m.replies
        if i % 3 >= 1:
            assert _step(m.session, m, "RCPT", smtp.rcpt(m.recipient)), m.replies
        if i % 3 == 2:
            assert _step(m.session, m, "DATA", smtp.docmd("DATA")), m.replies
    log_mark = len(pf.maillog_lines())
    milter.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        finishers = [
            threading.Thread(target=_finish_open, args=(smtp, m))
            for smtp, m in zip(clients, pending, strict=True)
        ]
        for t in finishers:
            t.start()
        hung = make_messages("d2-hung", HANG_MESSAGES)
        load = Load(pf.smtp_port, hung, concurrency=HANG_CONCURRENCY, per_session=4).run()
        for t in finishers:
            t.join(CLIENT_TIMEOUT * 4)
        during = [*pending, *hung]
        for m in during:
            expect.check(m, {expect.without[m.kind]})
        assert [t for m in during for t in m.transient] == []
        counts = check_delivered_once(pf, during)  # while the milter is still stopped
        sessions_hung = len(load.sessions) + OPEN_AT_STOP
        warnings = pf.wait_for_log(_TIMED_OUT, 60, count=sessions_hung, since=log_mark)
        poll(
            lambda: time.monotonic() - stopped >= 3 * HANG_TIMEOUT or None,
            LOAD_WAIT,
            lambda: "the hang to last",
        )
        assert milter.proc.poll() is None
        assert len(milter.events.of("session")) == sessions_before  # it really was stopped
    finally:
        milter.proc.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    hang = resumed - stopped
    slowest = max(s.end - s.start for s in load.sessions)

    # Postfix gave up on the open sessions: each ends in a summary now (none leaks).
    milter.wait_for(
        lambda e: e["event"] == "session", timeout=60, count=sessions_before + OPEN_AT_STOP
    )
    abandoned = milter.events.of("session")[sessions_before:]
    probes: list[Message] = []  # the last is the first session the milter serves again

    def served() -> Message | None:
        probe = make_messages(f"d2-probe{len(probes)}", 1, kinds=(POLICY,))[0]
        send_all(pf.smtp_port, [probe])
        expect.check(probe, {expect.without[POLICY], POLICY_VERDICT})
        probes.append(probe)
        return probe if probe.verdict == POLICY_VERDICT else None

    poll(  # within 120 s of SIGCONT, one probe after another
        served,
        resumed + 120 - time.monotonic(),
        lambda: f"a session served by the milter again; {[p.replies for p in probes]}",
        interval=0,
    )
    recovered = probes[-1].done - resumed
    after = make_messages("d2-after", len(PATTERN))
    send_all(pf.smtp_port, after)
    for m in after:
        expect.check(m, {expect.with_milter[m.kind]})
    counts += check_delivered_once(pf, [*probes, *after])
    after_ids = {m.queue_id for m in after if m.accepted}
    assert after_ids <= eom_queue_ids(milter.events.read())
    milter.wait_for(lambda e: e["event"] == "session" and bool(set(e["queue_ids"]) & after_ids))
    assert milter.proc.poll() is None, milter.stderr()
    assert "Traceback" not in milter.stderr(), milter.stderr()
    events = milter.events.read()
    errors = [e for e in events if e["event"] == "error"]
    sessions_after = sum(e["event"] == "session" for e in events) - sessions_before
    milter.stop()  # SIGTERM: exit 0, no traceback
    (stopped_event,) = milter.events.of("stopped")
    assert stopped_event["open_sessions"] == 0
    timed_out = Counter(hit[1] for line in warnings if (hit := _TIMED_OUT.search(line)))
    # each timeout met: connect (it covers the negotiation), command, content
    assert {"SMFIC_OPTNEG", "SMFIC_RCPT", "SMFIC_BODYEOB"} <= set(timed_out), timed_out
    drill_report(
        f"milter stopped {hang:.1f}s (timeouts {HANG_TIMEOUT}s); meanwhile sent {len(during)} "
        f"({OPEN_AT_STOP} in sessions open at the stop, the rest in {len(load.sessions)} new "
        f"ones, {HANG_CONCURRENCY} concurrent; slowest {slowest:.1f}s): accepted "
        f"{sum(m.accepted for m in during)}, rejected {sum(m.rejected for m in during)}, "
        f"4xx seen 0, delivered before SIGCONT {sum(m.accepted for m in during)}; timeout "
        f"warnings {len(warnings)} ({', '.join(f'{k} {v}' for k, v in sorted(timed_out.items()))}"
        f"); delivered in all {counts['delivered']}, lost {counts['lost']}, duplicates "
        f"{counts['duplicates']}; milter sessions seen before the stop {sessions_before}, "
        f"after SIGCONT {sessions_after} ({len(abandoned)} abandoned by Postfix); SIGCONT to "
        f"first session served {recovered:.2f}s ({len(probes)} probe(s)); error events "
        f"{len(errors)}; open sessions at stop {stopped_event['open_sessions']}"
    )


def _finish_open(smtp: smtplib.SMTP, message: Message) -> None:
    """Finish a session opened before the stop: RCPT, DATA, QUIT (each may wait a timeout)."""
    assert message.session is not None
    with contextlib.suppress(OSError), smtp:
        finish(smtp, message.session, message)
    message.session.end = time.monotonic()
