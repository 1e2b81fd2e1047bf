"""The pymilter adapter: one event per SMTP stage, Postfix's own rejections, policy replies.

What a session writes is :attr:`MilterSettings.event_mode` (``[milter] events``): ``stages``
(an event per stage, a counters-only ``session`` event at close), ``session`` (the stages
folded into the ``session`` event's :class:`~smtp_policy.core.events.SessionSummary`, within
its caps) or ``both``. A rule's decision and an error are written at once in every mode.

Theory of operation
-------------------
libmilter (C) accepts the MTA's connections and runs each one in its own POSIX thread;
pymilter calls ``Milter.factory()`` once per connection, at option negotiation, and then the
callbacks on that instance while holding the GIL. So all per-session state lives on the
instance, and the only objects shared between threads are immutable (:class:`MilterSettings`,
the knowledge base, the rules) or lock their own writes (the :class:`EventWriter`). A reload
swaps the factory's settings; a running session keeps the snapshot it negotiated with.

Negotiation (:meth:`PolicyMilter.negotiate`) decides the whole conversation up front:

* steps: connect, HELO, MAIL, RCPT, DATA and end-of-message; headers and body only when an
  end-of-message rule needs the real message size; unknown commands never;
* SMFIP_RCPT_REJ: recipients the MTA itself rejected still reach ``envrcpt``, marked by
  ``{rcpt_mailer}=error``, ``{rcpt_host}`` = the enhanced code and ``{rcpt_addr}`` = the text
  (Postfix drops the 3-digit code and the ``<address>:``; Sendmail sends the whole reply);
* "no reply" flags: a stage on which no rule can send a reply only observes, so the MTA need
  not wait for us there. Off by default (``--noreply on`` turns it on): over TCP fewer round
  trips can meet the delayed-ACK stall measured in research/perf-baseline.md, and on a unix
  socket libmilter drops the steps the MTA did not wait for when the client quits right after
  them (the load drill found a fifth of rejected recipients missing);
* macros (SMFIR_SETSYMLIST, at most 5 per stage): :data:`SYMLISTS`. The client's address,
  port and name come from the connect callback's arguments.

Every callback runs inside :func:`_guarded`: an exception becomes an ``error`` event and the
callback answers CONTINUE, so this milter never blocks mail (fail open). The rules are the
core's (:mod:`smtp_policy.core.policy`, the same decision the policy server makes): a stage's
matching rule gives a :class:`Verdict` at once, and a reply verdict is worded for the stage
that sends it (:func:`render_decision`: the admin's template, the core's sanitizer), sent with
``setreply``. A connect or HELO verdict answers HELO and every MAIL after, each in its words.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Concatenate, ParamSpec

import Milter

from smtp_policy.core.events import (
    MAX_SESSION_RECIPIENTS,
    MAX_SESSION_REPLIES,
    MAX_SESSION_TRANSACTIONS,
    Direction,
    Event,
    EventKind,
    SessionReply,
    SessionSummary,
    SessionTransaction,
    Source,
    reply_fields,
)
from smtp_policy.core.explain import explain_text
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import Explanation
from smtp_policy.core.policy import (
    REPLY_ACTIONS,
    Decision,
    PolicyRule,
    RuleAction,
    RuleFacts,
    Verdict,
    match_rules,
    render_decision,
    verdict_of,
)
from smtp_policy.core.sanitize import SafeReply, clean_text, milter_line
from smtp_policy.core.stages import Stage
from smtp_policy.core.texts import TextsConfig, audience_of
from smtp_policy.emit import EventWriter

CONNECT, HELO, MAIL, RCPT, DATA, EOM, ABORT, CLOSE = (
    "connect",
    "helo",
    "mail",
    "rcpt",
    "data",
    "eom",
    "abort",
    "close",
)

#: Macros requested per stage (SMFIR_SETSYMLIST replaces the MTA's list for that stage).
#: Postfix's defaults already hold all of these but ``{if_addr}`` (Sendmail's); Sendmail's
#: defaults lack ``v``, which tells the two apart when it is there.
SYMLISTS: Mapping[str, tuple[str, ...]] = {
    CONNECT: ("j", "v", "{daemon_name}", "{daemon_addr}", "{if_addr}"),
    HELO: ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"),
    MAIL: ("i", "{auth_type}", "{auth_authen}", "{mail_addr}", "{mail_host}"),
    RCPT: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    DATA: ("i",),
    EOM: ("i",),
}
_MACRO_STAGE = {
    CONNECT: Milter.M_CONNECT,
    HELO: Milter.M_HELO,
    MAIL: Milter.M_ENVFROM,
    RCPT: Milter.M_ENVRCPT,
    DATA: Milter.M_DATA,
    EOM: Milter.M_EOM,
}
#: (no-reply bit, skip-step bit) per protocol step.
_STEPS = {
    CONNECT: (Milter.P_NR_CONN, Milter.P_NOCONNECT),
    HELO: (Milter.P_NR_HELO, Milter.P_NOHELO),
    MAIL: (Milter.P_NR_MAIL, Milter.P_NOMAIL),
    RCPT: (Milter.P_NR_RCPT, Milter.P_NORCPT),
    DATA: (Milter.P_NR_DATA, Milter.P_NODATA),
    "header": (Milter.P_NR_HDR, Milter.P_NOHDRS),
    "body": (Milter.P_NR_BODY, Milter.P_NOBODY),
}
_CONTENT = ("header", "body")
#: The only actions we may use: request macros, put a message on hold.
_ACTIONS = Milter.SETSYMLIST | Milter.QUARANTINE

# pymilter's return codes, typed (pymilter has no type information).
CONTINUE: int = Milter.CONTINUE
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL
DISCARD: int = Milter.DISCARD
NOREPLY: int = Milter.NOREPLY
ALL_OPTS: int = Milter.ALL_OPTS

MAX_VALUE_CHARS = 4096  # longer values (a 10 kB address...) are cut in events

#: A session record's outcome of a policy action, when no reply is sent with it.
_OUTCOMES: Mapping[RuleAction, str] = {
    RuleAction.REJECT: "rejected",  # decided at connect, answered at HELO and MAIL
    RuleAction.TEMPFAIL: "tempfailed",
    RuleAction.DISCARD: "discarded",
    RuleAction.QUARANTINE: "quarantined",
    RuleAction.ACCEPT: "accepted",
}


@dataclass(frozen=True, slots=True)
class MilterPolicy:
    """The configured rules, and what they ask of the negotiation.

    ``stages`` are the stages some rule is decided at; ``replying`` those whose rules need the
    MTA to wait for our answer (reject, tempfail, discard); ``content`` asks for headers and
    body to measure the real size at eom.
    """

    rules: tuple[PolicyRule, ...] = ()
    stages: frozenset[str] = field(init=False)
    replying: frozenset[str] = field(init=False)
    content: bool = field(init=False)

    def __post_init__(self) -> None:
        waits = REPLY_ACTIONS | {RuleAction.DISCARD}
        derived = {
            "stages": frozenset(r.stage.value for r in self.rules),
            "replying": frozenset(r.stage.value for r in self.rules if r.action in waits),
            "content": any(r.stage is Stage.EOM and r.size_over is not None for r in self.rules),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # derived fields of a frozen dataclass

    def reply_stages(self) -> frozenset[str]:
        """Steps that must wait for us. Connect/HELO decisions are sent at HELO and MAIL."""
        early = {HELO, MAIL} if self.replying & {CONNECT, HELO} else set()
        return frozenset((self.replying - {CONNECT}) | early)


def policy_from_rules(rules: Sequence[PolicyRule]) -> MilterPolicy:
    """A :class:`MilterPolicy` over configured rules."""
    return MilterPolicy(tuple(rules))


@dataclass(frozen=True, slots=True)
class MilterSettings:
    """Everything a session needs; immutable, shared by every session negotiated with it."""

    events: EventWriter
    kb: KnowledgeBase
    policy: MilterPolicy = MilterPolicy()
    texts: TextsConfig | None = None  # None: the rule's text as it is, then our summary
    noreply: bool = True  # negotiate "no reply" where no rule replies
    #: ``[milter] events``: ``stages`` (an event per stage), ``session`` (the stages folded
    #: into the session event) or ``both``. Policy decisions and errors are written at once
    #: in every mode.
    event_mode: str = "stages"

    @property
    def stage_events(self) -> bool:
        """Whether every stage (and the MTA's own rejections) gets its own event."""
        return self.event_mode != "session"

    @property
    def session_record(self) -> bool:
        """Whether the session event carries every transaction's stage outcomes."""
        return self.event_mode != "stages"


class MilterFactory:
    """``Milter.factory``: one :class:`PolicyMilter` per connection, from the current settings.

    Set once; a reload calls :meth:`replace`. ``active`` counts sessions not closed yet.
    """

    def __init__(self, settings: MilterSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._active = 0

    @property
    def settings(self) -> MilterSettings:
        """The settings new sessions get."""
        return self._settings

    @property
    def active(self) -> int:
        """Sessions opened and not closed yet."""
        return self._active

    def replace(self, settings: MilterSettings) -> None:
        """Use ``settings`` for the sessions negotiated from now on."""
        self._settings = settings

    def __call__(self) -> PolicyMilter:
        with self._lock:
            self._active += 1
        return PolicyMilter(self._settings, on_close=self._closed)

    def _closed(self) -> None:
        with self._lock:
            self._active -= 1


def explain_rejected_recipient(rcpt_host: str, rcpt_addr: str, kb: KnowledgeBase) -> Explanation:
    """Explain an MTA-rejected recipient from its ``{rcpt_host}`` and ``{rcpt_addr}`` macros.

    Sendmail puts the whole reply in ``{rcpt_addr}`` ("550 5.1.1 ... User unknown"); Postfix
    only the text ("Recipient address rejected: ..."), with the enhanced code in
    ``{rcpt_host}``.
    """
    return explain_text(rejected_text(rcpt_host, rcpt_addr), kb)


def rejected_text(rcpt_host: str, rcpt_addr: str) -> str:
    """The MTA's reply to a rejected recipient, from ``{rcpt_host}`` and ``{rcpt_addr}``.

    Sendmail's ``{rcpt_addr}`` is the whole reply ("550 5.1.1 User unknown", its
    ``{rcpt_host}`` the same "5.1.1" again); Postfix's is the text after the enhanced code.
    """
    if rcpt_addr[:3].isdigit() and rcpt_addr[3:4] in ("", " ", "-"):
        return rcpt_addr
    return f"{rcpt_host} {rcpt_addr}".strip()


def detect_mta(macros: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``("postfix" | "sendmail" | None, version)`` from the connect macros."""
    v = macros.get("v", "")
    if v.lower().startswith("postfix"):
        return "postfix", v.partition(" ")[2] or None
    if v:
        return "sendmail", v
    if "{if_addr}" in macros:
        return "sendmail", None
    if "{daemon_addr}" in macros:
        return "postfix", None
    if "j" in macros:
        return "sendmail", None
    return None, None


def text_of(value: object) -> str:
    """A value from libmilter as text that JSON can carry: undecodable bytes as ``\\xNN``."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    else:
        text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if len(text) > MAX_VALUE_CHARS:
        text = f"{text[:MAX_VALUE_CHARS]}...[{len(text) - MAX_VALUE_CHARS} more]"
    return text


def _peer(hostaddr: object) -> tuple[str | None, int | None]:
    """Client address and port from the connect callback (a tuple for inet, a str otherwise)."""
    if isinstance(hostaddr, tuple) and hostaddr:
        port = hostaddr[1] if len(hostaddr) > 1 and isinstance(hostaddr[1], int) else None
        return text_of(hostaddr[0]), port
    if isinstance(hostaddr, str | bytes):
        return text_of(hostaddr), None
    return None, None


def _params(args: Sequence[object]) -> dict[str, str | None]:
    """ESMTP parameters (``SIZE=123``, ``BODY=8BITMIME``) as an upper-cased dict."""
    out: dict[str, str | None] = {}
    for arg in args:
        key, sep, value = text_of(arg).partition("=")
        out[key.upper()] = value if sep else None
    return out


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]


def last_resort(message: str) -> None:
    """One line on stderr, for when even an error event cannot be written."""
    with contextlib.suppress(Exception):  # stderr is gone too: nothing left to tell
        print(f"smtp-policy milter: {_one_line(message)}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class _Transaction:
    """State of one MAIL transaction."""

    sender: str | None = None
    queue_id: str | None = None
    size: int | None = None  # SIZE= from MAIL FROM
    measured: int = 0  # header and body octets, when the content steps are negotiated
    recipients: list[str] = field(default_factory=list)
    quarantine: Verdict | None = None
    accepted: bool = False  # an accept rule ended rule checks for this transaction
    outcomes: list[SessionReply] = field(default_factory=list)  # recipients (session record)
    outcomes_omitted: int = 0
    replies: list[SessionReply] = field(default_factory=list)  # MAIL, DATA, eom replies
    rcpt_noted: bool = False  # the current recipient's outcome is recorded


@dataclass(slots=True)
class _Session:
    """State of one SMTP session (one milter connection)."""

    id: str
    started: float
    client_addr: str | None = None
    client_name: str | None = None
    hostname: str | None = None
    helo: str | None = None
    mta: str | None = None
    auth_user: str | None = None
    sticky: Verdict | None = None  # a connect/HELO decision, applied from then on
    accepted: bool = False  # an accept rule at connect/HELO ended rule checks
    commands: dict[str, int] = field(default_factory=dict)
    accepted_rcpts: int = 0
    rejected_by_mta: int = 0
    rejected_by_policy: int = 0
    messages: int = 0
    aborted: int = 0
    errors: int = 0
    queue_ids: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)  # rejected/tempfailed per stage
    transactions: list[SessionTransaction] = field(default_factory=list)
    transactions_omitted: int = 0
    recipients_noted: int = 0
    replies: list[SessionReply] = field(default_factory=list)  # connect, HELO decisions
    replies_omitted: int = 0


P = ParamSpec("P")
_Callback = Callable[Concatenate["PolicyMilter", P], int]


def _guarded(stage: str) -> Callable[[_Callback[P]], _Callback[P]]:
    """Fail open: an exception becomes an error event and CONTINUE; map CONTINUE to NOREPLY."""

    def decorate(func: _Callback[P]) -> _Callback[P]:
        @functools.wraps(func)
        def wrapper(self: PolicyMilter, /, *args: P.args, **kwargs: P.kwargs) -> int:
            try:
                rc = func(self, *args, **kwargs)
            except Exception as exc:
                self.failed(stage, exc)
                rc = CONTINUE
            return self.answer(stage, rc)

        return wrapper

    return decorate


#: The session served by the current libmilter thread (one thread per MTA connection), for
#: errors pymilter's C layer raises before any of our code runs (see report_uncaught).
_current = threading.local()


def report_uncaught(exc: BaseException, events: EventWriter) -> None:
    """Record an exception nobody could catch (``sys.excepthook``), in its session if known."""
    milter: PolicyMilter | None = getattr(_current, "milter", None)
    if milter is not None:
        milter.recover(exc)
        return
    text = _one_line(text_of(f"{type(exc).__name__}: {exc}"))
    last_resort(text)  # outside any session (the main thread): say it where people look
    try:
        events.emit(
            Event(
                event=EventKind.ERROR,
                source=Source.MILTER,
                ts=datetime.now(UTC),
                text=text,
                extra={"exception": type(exc).__name__},
            )
        )
    except Exception:
        last_resort("and the event stream is broken too")


class PolicyMilter(Milter.Base):  # type: ignore[misc]  # pymilter ships no type information
    """One SMTP session as the milter sees it (one instance per MTA connection)."""

    def __init__(
        self, settings: MilterSettings, on_close: Callable[[], None] | None = None
    ) -> None:
        self._settings = settings
        self._on_close = on_close
        self._reply_stages = settings.policy.reply_stages()
        self._stage_events = settings.stage_events
        self._record = settings.session_record
        self._s = _Session(id=secrets.token_hex(6), started=time.monotonic())
        self._tx = _Transaction()
        self._actions = 0
        self._protocol = 0

    # -- negotiation -------------------------------------------------------------------------

    def negotiate(self, opts: list[int]) -> int:
        """Choose steps, no-reply flags, RCPT_REJ, actions and macros (see the module doc)."""
        _current.milter = self
        try:
            self._actions = opts[0] & _ACTIONS
            self._protocol = opts[1] & ~self.unwanted_steps()
            opts[0], opts[1], opts[2], opts[3] = self._actions, self._protocol, 0, 0
            if self._actions & Milter.SETSYMLIST:
                for stage, macros in SYMLISTS.items():
                    # pymilter 1.0.5's Base.setsymlist hands its C layer bytes, which it refuses
                    self._ctx.setsymlist(_MACRO_STAGE[stage], " ".join(macros))
        except Exception as exc:
            self.failed("negotiate", exc)
            return ALL_OPTS
        return CONTINUE

    def unwanted_steps(self) -> int:
        """The protocol bits to clear from what the MTA offers."""
        mask = Milter.P_HDR_LEADSPC | Milter.P_NR_EOH | Milter.P_NR_UNKN
        content = self._settings.policy.content
        for stage, (no_reply, skip) in _STEPS.items():
            if stage in _CONTENT and not content:
                mask |= no_reply  # not asked for at all: keep the skip bit
                continue
            mask |= skip
            if stage in self._reply_stages or not self._settings.noreply:
                mask |= no_reply
        return int(mask)

    def answer(self, stage: str, rc: int) -> int:
        """The code for libmilter: NOREPLY where that was negotiated."""
        no_reply = _STEPS.get(stage, (0, 0))[0]
        if not (no_reply and self._protocol & no_reply):
            return rc
        if rc != CONTINUE:
            self.failed(stage, RuntimeError(f"decision {rc} dropped: {stage} is no-reply"))
        return NOREPLY

    # -- callbacks ---------------------------------------------------------------------------

    @_guarded(CONNECT)
    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        """A client connected: who, and which MTA we serve."""
        self._count(CONNECT)
        macros = self.macros(CONNECT)
        s = self._s
        s.client_name = text_of(hostname) if hostname else None
        s.client_addr, port = _peer(hostaddr)
        s.mta, version = detect_mta(macros)
        s.hostname = macros.get("j") or macros.get("{daemon_name}")
        extra: dict[str, object] = {"macros": macros, "client_port": port}
        if version:
            extra["mta_version"] = version
        self._emit_stage(CONNECT, extra)
        self._decide_early(CONNECT)
        return CONTINUE

    @_guarded(HELO)
    def hello(self, hostname: str | bytes) -> int:
        """HELO/EHLO: the name the client gave (TLS macros once it started TLS)."""
        self._count(HELO)
        self._s.helo = text_of(hostname)
        if self._stage_events:
            self._emit_stage(HELO, {"macros": self.macros(HELO)})
        self._decide_early(HELO)
        sticky = self._s.sticky
        return self._enforce(HELO, sticky) if sticky else CONTINUE

    @_guarded(MAIL)
    def envfrom(self, sender: str, *args: str) -> int:
        """MAIL FROM: a new transaction."""
        self._count(MAIL)
        self._end_transaction("open")  # a MAIL without an end of the one before
        self._tx = _Transaction(sender=text_of(sender))
        macros = self.macros(MAIL)
        self._queue_id(macros)
        self._s.auth_user = macros.get("{auth_authen}") or self._s.auth_user
        params = _params(args)
        size = params.get("SIZE")
        self._tx.size = int(size) if size and size.isascii() and size.isdigit() else None
        self._emit_stage(MAIL, {"macros": macros, "params": params})
        verdict = self._s.sticky or self._decide(MAIL)
        return self._enforce(MAIL, verdict) if verdict else CONTINUE

    @_guarded(RCPT)
    def envrcpt(self, recipient: str, *args: str) -> int:
        """RCPT TO: one recipient, or one the MTA already rejected (SMFIP_RCPT_REJ)."""
        self._count(RCPT)
        macros = self.macros(RCPT)
        self._queue_id(macros)
        rcpt = text_of(recipient)
        self._tx.rcpt_noted = False
        if macros.get("{rcpt_mailer}") == "error":
            self._rejected_by_mta(rcpt, macros)
            return CONTINUE  # the MTA ignores our answer to a recipient it rejected
        if self._stage_events:
            self._emit_stage(RCPT, {"macros": macros, "params": _params(args)}, recipient=rcpt)
        verdict = self._decide(RCPT, recipient=rcpt)
        if verdict and verdict.action in REPLY_ACTIONS:
            self._s.rejected_by_policy += 1
        else:
            self._s.accepted_rcpts += 1
            self._tx.recipients.append(rcpt)
        rc = self._enforce(RCPT, verdict, rcpt) if verdict else CONTINUE
        if self._record and not self._tx.rcpt_noted:
            self._note(SessionReply(RCPT, "accepted", recipient=rcpt))
        return rc

    @_guarded(DATA)
    def data(self) -> int:
        """DATA: the client is about to send the message."""
        self._count(DATA)
        macros = self.macros(DATA)
        self._queue_id(macros)
        self._emit_stage(DATA, {"macros": macros})
        verdict = self._decide(DATA)
        return self._enforce(DATA, verdict) if verdict else CONTINUE

    @_guarded("header")
    def header(self, name: str, value: str) -> int:
        """A header (only negotiated to measure the message for eom size rules)."""
        self._tx.measured += len(text_of(name)) + len(text_of(value)) + 4  # ": " and CRLF
        return CONTINUE

    @_guarded("body")
    def body(self, chunk: bytes) -> int:
        """A body chunk (only negotiated to measure the message for eom size rules)."""
        self._tx.measured += len(chunk)
        return CONTINUE

    @_guarded(EOM)
    def eom(self) -> int:
        """End of message: the last chance to reject, or to put the message on hold."""
        self._count(EOM)
        macros = self.macros(EOM)
        self._queue_id(macros)
        extra: dict[str, object] = {"macros": macros, "recipients": len(self._tx.recipients)}
        if self._settings.policy.content:
            extra["size"] = self._tx.measured + 2  # + the empty line after the headers
        self._emit_stage(EOM, extra)
        self._s.messages += 1
        verdict = self._decide(EOM)
        rc = self._enforce(EOM, verdict) if verdict else CONTINUE
        if self._tx.quarantine is not None and rc == CONTINUE:
            held = self._tx.quarantine
            self.quarantine(milter_line(clean_text(f"smtp-policy rule {held.rule}")))
        self._end_transaction(EOM)
        self._tx = _Transaction()
        return rc

    @_guarded(ABORT)
    def abort(self) -> int:
        """The transaction ended without a message (RSET, a reject, the client left)."""
        self._count(ABORT)
        self._s.aborted += 1
        self._emit_stage(ABORT, {})
        self._end_transaction(ABORT)
        self._tx = _Transaction()
        return CONTINUE

    @_guarded(CLOSE)
    def close(self) -> int:
        """The connection ended: one summary event for the whole session."""
        try:
            self._count(CLOSE)
            self._end_transaction("open")
            self._emit_session()
        finally:
            _current.milter = None
            if self._on_close is not None:
                self._on_close()
                self._on_close = None
        return CONTINUE

    def recover(self, exc: BaseException) -> None:
        """pymilter decodes the client name, HELO and header names as strict UTF-8 and calls
        nothing if that fails: record the error and, for HELO, the stage with bytes escaped."""
        if self._tx.sender is not None:
            self.failed("header", exc)
        elif CONNECT not in self._s.commands:
            self.failed(CONNECT, exc)
        else:
            self.failed(HELO, exc)
            if isinstance(exc, UnicodeDecodeError):
                self.hello(exc.object)  # the MTA already had CONTINUE; a verdict sticks

    # -- policy ------------------------------------------------------------------------------

    def facts(self, stage: str, recipient: str | None = None) -> RuleFacts:
        """What the rules can match on at ``stage``."""
        s, tx = self._s, self._tx
        size = tx.measured + 2 if stage == EOM and self._settings.policy.content else tx.size
        return RuleFacts(
            client_addr=s.client_addr or "",
            sender=tx.sender,
            recipient=recipient,
            size=size,
            authenticated=bool(s.auth_user),
            helo=s.helo,
        )

    def _decide(self, stage: str, recipient: str | None = None) -> Verdict | None:
        """Ask the rules; an accept verdict is recorded and ends the checks it covers."""
        policy = self._settings.policy
        if stage not in policy.stages or self._s.accepted or self._tx.accepted:
            return None
        rule = match_rules(policy.rules, stage, self.facts(stage, recipient))
        verdict = None if rule is None else verdict_of(rule)
        if verdict is None or verdict.action is not RuleAction.ACCEPT:
            return verdict
        self._emit_decision(stage, verdict, None, None, recipient)
        if stage in (CONNECT, HELO):
            self._s.accepted = True
        elif stage != RCPT:
            self._tx.accepted = True
        return None

    def _decide_early(self, stage: str) -> None:
        """Connect and HELO decisions stick: they answer HELO and every MAIL from then on."""
        verdict = self._decide(stage)
        if verdict is not None and self._s.sticky is None:
            self._s.sticky = verdict
            if stage == CONNECT:  # no reply can be sent at connect: record it now
                self._emit_decision(stage, verdict, None, None)

    def _enforce(self, stage: str, verdict: Verdict, recipient: str | None = None) -> int:
        """Carry a verdict out: a reply, a discard, or a hold at end of message."""
        if verdict.action in REPLY_ACTIONS:
            return self._send_reply(stage, verdict, recipient)
        if stage in (CONNECT, HELO):
            return CONTINUE  # discard and hold need a transaction: they apply at MAIL
        if verdict.action is RuleAction.DISCARD:
            self._emit_decision(stage, verdict, None, None, recipient)
            return DISCARD
        if verdict.action is RuleAction.QUARANTINE and self._tx.quarantine is None:
            self._tx.quarantine = verdict  # held at end of message
            self._emit_decision(stage, verdict, None, None, recipient)
        return CONTINUE

    def _send_reply(self, stage: str, verdict: Verdict, recipient: str | None) -> int:
        worded = self._word(verdict, recipient)
        reply = worded.reply()
        if reply is None:  # not a reply verdict: nothing to send
            return CONTINUE
        enhanced = str(reply.enhanced) if reply.enhanced else None
        try:
            self.setreply(str(reply.code), enhanced, *[milter_line(x) for x in reply.lines])
        except Exception as exc:  # the MTA falls back to its generic text; the verdict stands
            self.failed(stage, exc)
        self._emit_decision(stage, verdict, reply, worded.explanation, recipient)
        self._s.refused[stage] = self._s.refused.get(stage, 0) + 1
        return REJECT if reply.code >= 500 else TEMPFAIL

    def _word(self, verdict: Verdict, recipient: str | None) -> Decision:
        """The verdict's reply in this stage's words (the admin's texts, for this client)."""
        texts = self._settings.texts
        context = self._context(recipient)
        audience = audience_of(context["client_addr"], texts) if texts else "external"
        kb = self._settings.kb
        return render_decision(verdict, kb=kb, texts=texts, context=context, audience=audience)

    def _context(self, recipient: str | None) -> dict[str, str]:
        """The session's values for the template placeholders."""
        return {
            "recipient": (recipient or "").strip("<>"),
            "sender": (self._tx.sender or "").strip("<>"),
            "client_addr": self._s.client_addr or "",
            "client_name": self._s.client_name or "",
            "queue_id": self._tx.queue_id or "",
            "hostname": self._s.hostname or "",
            "date": format_datetime(datetime.now(UTC)),
        }

    # -- events ------------------------------------------------------------------------------

    def macros(self, stage: str) -> dict[str, str]:
        """The requested macros of ``stage`` that have a value."""
        out = {}
        for name in SYMLISTS[stage]:
            try:
                value = self.getsymval(name)
            except UnicodeDecodeError as exc:  # pymilter decodes macros as strict UTF-8
                value = exc.object
            if value is not None:
                out[name] = text_of(value)
        return out

    def _queue_id(self, macros: Mapping[str, str]) -> None:
        qid = macros.get("i")
        if qid:
            self._tx.queue_id = qid
            if qid not in self._s.queue_ids:
                self._s.queue_ids.append(qid)

    def _count(self, stage: str) -> None:
        self._s.commands[stage] = self._s.commands.get(stage, 0) + 1

    def _event(self, event: EventKind, stage: str, **fields: object) -> Event:
        s, tx = self._s, self._tx
        base: dict[str, object] = {
            "session": s.id,
            "queue_id": tx.queue_id,
            "client_addr": s.client_addr,
            "client_name": s.client_name,
            "helo": s.helo,
            "sender": tx.sender,
            "mta": s.mta,
        }
        base.update(fields)
        return Event(event=event, source=Source.MILTER, ts=datetime.now(UTC), stage=stage, **base)  # type: ignore[arg-type]

    def _emit(self, event: Event) -> None:
        self._settings.events.emit(event)

    def _emit_stage(self, stage: str, extra: Mapping[str, object], **fields: object) -> None:
        if self._stage_events:
            self._emit(self._event(EventKind.STAGE, stage, extra=dict(extra), **fields))

    def _rejected_by_mta(self, rcpt: str, macros: Mapping[str, str]) -> None:
        """Record a recipient the MTA rejected, explained by the core."""
        s = self._s
        s.rejected_by_mta += 1
        s.refused[RCPT] = s.refused.get(RCPT, 0) + 1
        host, addr = macros.get("{rcpt_host}", ""), macros.get("{rcpt_addr}", "")
        explanation = explain_rejected_recipient(host, addr, self._settings.kb)
        fields = reply_fields(explanation, text=rejected_text(host, addr))
        if self._record:
            transient = fields.get("klass") == "transient" or host.startswith("4")
            self._note(
                SessionReply(
                    RCPT,
                    "tempfailed" if transient else "rejected",
                    recipient=rcpt,
                    by="mta",
                    code=fields.get("code"),
                    enhanced=fields.get("enhanced"),
                    klass=fields.get("klass"),
                    reason=fields.get("reason"),
                    rule=fields.get("rule"),
                    text=fields.get("text"),
                )
            )
        if not self._stage_events:
            return
        extra = {"by": "mta", "macros": dict(macros)}
        self._emit(
            self._event(
                EventKind.REPLY,
                RCPT,
                direction=Direction.UPSTREAM,
                recipient=rcpt,
                extra=extra,
                **fields,
            )
        )

    def _emit_decision(
        self,
        stage: str,
        verdict: Verdict,
        reply: SafeReply | None,
        explanation: Explanation | None,
        recipient: str | None = None,
    ) -> None:
        """Record a rule's verdict: the reply sent (``friendly``: its lines), or the action."""
        fields: dict[str, object] = dict(reply_fields(explanation))
        fields["rule"] = verdict.rule
        if explanation is None and verdict.reason is not None:
            fields["reason"] = verdict.reason.value
        if reply is not None:
            fields["text"] = reply.wire().replace("\r\n", "\n").rstrip("\n")
            fields["friendly"] = "\n".join(reply.lines)
        if self._record:
            self._note_decision(stage, verdict, reply, fields, recipient)
        extra = {"by": "policy", "action": verdict.action.value}
        self._emit(
            self._event(
                EventKind.REPLY,
                stage,
                direction=Direction.UPSTREAM,
                recipient=recipient,
                extra=extra,
                **fields,
            )
        )

    def _note_decision(
        self,
        stage: str,
        verdict: Verdict,
        reply: SafeReply | None,
        fields: Mapping[str, object],
        recipient: str | None,
    ) -> None:
        """A policy decision in the session record (its ``reply`` event is written too)."""
        action = verdict.action
        if reply is not None:
            outcome = "rejected" if reply.code >= 500 else "tempfailed"
        else:
            outcome = _OUTCOMES.get(action, "accepted")
        code, text = fields.get("code"), fields.get("text")
        enhanced, klass = fields.get("enhanced"), fields.get("klass")
        reason, rule = fields.get("reason"), fields.get("rule")
        self._note(
            SessionReply(
                stage,
                outcome,
                recipient=recipient,
                by="policy",
                action=action.value,
                code=code if isinstance(code, int) else None,
                enhanced=enhanced if isinstance(enhanced, str) else None,
                klass=klass if isinstance(klass, str) else None,
                reason=reason if isinstance(reason, str) else None,
                rule=rule if isinstance(rule, str) else None,
                text=text if isinstance(text, str) else None,
            )
        )

    def _note(self, outcome: SessionReply) -> None:
        """Keep a stage's outcome for the session record, within its caps."""
        s, tx = self._s, self._tx
        if outcome.stage in (CONNECT, HELO):
            if len(s.replies) < MAX_SESSION_REPLIES:
                s.replies.append(outcome)
            else:
                s.replies_omitted += 1
            return
        if len(s.transactions) >= MAX_SESSION_TRANSACTIONS:
            return  # this transaction is only counted
        if outcome.stage == RCPT and outcome.recipient is not None:
            if tx.rcpt_noted:
                return  # one outcome per recipient: the first decision's
            tx.rcpt_noted = True
            if s.recipients_noted < MAX_SESSION_RECIPIENTS:
                s.recipients_noted += 1
                tx.outcomes.append(outcome)
            else:
                tx.outcomes_omitted += 1
        elif len(tx.replies) < MAX_SESSION_REPLIES:
            tx.replies.append(outcome)

    def _end_transaction(self, end: str) -> None:
        """Close the current transaction in the session record (none: no MAIL was seen)."""
        s, tx = self._s, self._tx
        if not self._record or tx.sender is None:
            return
        if len(s.transactions) >= MAX_SESSION_TRANSACTIONS:
            s.transactions_omitted += 1
        else:
            s.transactions.append(
                SessionTransaction(
                    end,
                    sender=tx.sender,
                    queue_id=tx.queue_id,
                    size=tx.size,
                    recipients=tuple(tx.outcomes),
                    recipients_omitted=tx.outcomes_omitted,
                    replies=tuple(tx.replies),
                )
            )
        tx.sender = None  # recorded once

    def _counts(self) -> str:
        """Postfix's ``disconnect`` summary: ``name=N``, or ``name=passed/N`` when some of
        them were rejected or tempfailed (by the MTA or a rule)."""
        s = self._s
        parts = []
        for stage in (CONNECT, HELO, MAIL, RCPT, DATA, EOM, ABORT):
            total = s.commands.get(stage, 0)
            if not total:
                continue
            refused = s.refused.get(stage, 0)
            parts.append(f"{stage}={total - refused}/{total}" if refused else f"{stage}={total}")
        return " ".join(parts)

    def _emit_session(self) -> None:
        s = self._s
        record = SessionSummary(
            commands=dict(s.commands),
            counts=self._counts(),
            recipients_accepted=s.accepted_rcpts,
            rejected_by_mta=s.rejected_by_mta,
            rejected_by_policy=s.rejected_by_policy,
            messages=s.messages,
            aborted=s.aborted,
            errors=s.errors,
            queue_ids=tuple(s.queue_ids),
            duration_ms=round((time.monotonic() - s.started) * 1000, 1),
            transactions=tuple(s.transactions) if self._record else None,
            transactions_omitted=s.transactions_omitted,
            replies=tuple(s.replies),
            replies_omitted=s.replies_omitted,
        )
        self._emit(self._event(EventKind.SESSION, CLOSE, session_record=record))

    def failed(self, stage: str, exc: BaseException) -> None:
        """Record an exception as an error event; never raises."""
        try:
            self._s.errors += 1
            text = _one_line(text_of(f"{type(exc).__name__}: {exc}"))
            extra = {"exception": type(exc).__name__}
            self._emit(self._event(EventKind.ERROR, stage, text=text, extra=extra))
        except Exception as inner:  # the event stream itself is broken: one line, no traceback
            last_resort(f"{stage}: {exc!r} (and recording it failed: {inner!r})")
