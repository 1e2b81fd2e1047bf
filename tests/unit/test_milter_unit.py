"""The milter class driven by pymilter's own fake MTA context (``Milter.testctx.TestCtx``)."""

from __future__ import annotations

import io
import ipaddress
import json
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import Milter
import pytest
from Milter.testctx import TestCtx as FakeMta  # renamed: pytest would collect "Test*"

from smtp_policy.adapters import milter as mod
from smtp_policy.adapters.milter import (
    MilterFactory,
    MilterPolicy,
    MilterSettings,
    PolicyMilter,
    detect_mta,
    policy_from_rules,
    text_of,
)
from smtp_policy.commands import milter as command
from smtp_policy.config import ListenAddress, load_config
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import EnhancedCode, Reason
from smtp_policy.core.policy import (
    PolicyRule,
    RuleAction,
    RuleFacts,
    compile_pattern,
    render_decision,
    verdict_of,
)
from smtp_policy.core.sanitize import MAX_LINE_OCTETS
from smtp_policy.core.stages import Stage
from smtp_policy.data import default_knowledge
from smtp_policy.emit import EventWriter

Ev = dict[str, Any]
NR_BITS = (
    Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT | Milter.P_NR_DATA
)
POSTFIX_CONNECT = {"j": "mx.test", "v": "Postfix 3.7.11", "{daemon_addr}": "127.0.0.1"}


class Recorder:
    """Events written to memory, parsed back."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.writer = EventWriter(self.buffer)

    def all(self) -> list[Ev]:
        return [json.loads(line) for line in self.buffer.getvalue().splitlines()]

    def kind(self, kind: str) -> list[Ev]:
        return [e for e in self.all() if e["event"] == kind]


@pytest.fixture(name="kb", scope="module")
def _kb() -> KnowledgeBase:
    return default_knowledge()


@pytest.fixture(name="events")
def _events() -> Recorder:
    return Recorder()


@pytest.fixture(autouse=True)
def _fresh_testctx(monkeypatch: pytest.MonkeyPatch) -> None:
    """FakeMta negotiates with one class-level list that negotiate() mutates: renew it.

    The MTA it plays offers every action and step but no "no reply" flags, because FakeMta
    treats NOREPLY as a rejection; the no-reply tests negotiate by hand.
    """
    monkeypatch.setattr(FakeMta, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF & ~NR_BITS, 0, 0])


def rule(stage: str, action: RuleAction = RuleAction.REJECT, **keys: Any) -> MilterPolicy:
    """A policy with one rule at one stage (``keys``: the rule's other fields; name "r")."""
    return policy_from_rules([PolicyRule(keys.pop("name", "r"), Stage(stage), action, **keys)])


#: A recipient pattern no test address matches.
NOBODY = (compile_pattern("nobody@nowhere.test"),)


@pytest.fixture(name="start")
def _start(
    monkeypatch: pytest.MonkeyPatch, kb: KnowledgeBase, events: Recorder
) -> Callable[..., FakeMta]:
    """``start(policy=..., macros=...)``: a FakeMta after connect+HELO, factory installed."""

    def start(
        policy: MilterPolicy | None = None,
        macros: dict[str, str] | None = None,
        helo: str = "client.test",
    ) -> FakeMta:
        settings = MilterSettings(events.writer, kb, policy or MilterPolicy(), noreply=False)
        monkeypatch.setattr(Milter, "factory", MilterFactory(settings))
        ctx = FakeMta()
        for name, value in (POSTFIX_CONNECT if macros is None else macros).items():
            ctx._setsymval(name, value)
        ctx.rc = ctx._connect(host="client.example", helo=helo, ip="192.0.2.7")
        return ctx

    return start


def rcpt_rejected_by_mta(ctx: FakeMta, host: str, addr: str) -> None:
    """Set the macros a MTA sends with a recipient it rejected itself (SMFIP_RCPT_REJ)."""
    ctx._setsymval("{rcpt_mailer}", "error")
    ctx._setsymval("{rcpt_host}", host)
    ctx._setsymval("{rcpt_addr}", addr)


def clear_rejection(ctx: FakeMta) -> None:
    for name in ("{rcpt_mailer}", "{rcpt_host}", "{rcpt_addr}"):
        ctx._macros.pop(name, None)


# -- negotiation ----------------------------------------------------------------------------


def negotiated(
    kb: KnowledgeBase, events: Recorder, **settings: Any
) -> tuple[PolicyMilter, list[int], FakeMta]:
    m = PolicyMilter(MilterSettings(events.writer, kb, **settings))
    ctx = FakeMta()
    ctx._stage = -1
    m._setctx(ctx)
    opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
    assert m.negotiate(opts) == Milter.CONTINUE
    return m, opts, ctx


def test_negotiation_observer_only(kb: KnowledgeBase, events: Recorder) -> None:
    """No rules: every step we use is "no reply", RCPT_REJ on, content steps skipped."""
    _, opts, ctx = negotiated(kb, events)
    actions, steps = opts[0], opts[1]
    assert actions == Milter.SETSYMLIST | Milter.QUARANTINE
    assert steps & Milter.P_RCPT_REJ
    assert steps & NR_BITS == NR_BITS
    for skipped in (Milter.P_NOHDRS, Milter.P_NOEOH, Milter.P_NOBODY, Milter.P_NOUNKNOWN):
        assert steps & skipped
    for used in (
        Milter.P_NOCONNECT,
        Milter.P_NOHELO,
        Milter.P_NOMAIL,
        Milter.P_NORCPT,
        Milter.P_NODATA,
    ):
        assert not steps & used
    assert not steps & Milter.P_HDR_LEADSPC
    requested = {
        stage: {m.decode() for m in macros} for stage, macros in enumerate(ctx._symlist) if macros
    }
    assert requested[Milter.M_CONNECT] == {"j", "v", "{daemon_name}", "{daemon_addr}", "{if_addr}"}
    assert requested[Milter.M_ENVRCPT] == {"i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"}
    assert all(len(macros) <= 5 for macros in requested.values())


def test_negotiation_waits_where_rules_decide(kb: KnowledgeBase, events: Recorder) -> None:
    """A rcpt rule: RCPT replies, the rest stays no-reply; connect rules reply at HELO and MAIL."""
    _, opts, _ = negotiated(kb, events, policy=rule("rcpt"))
    assert not opts[1] & Milter.P_NR_RCPT
    assert opts[1] & (NR_BITS & ~Milter.P_NR_RCPT) == NR_BITS & ~Milter.P_NR_RCPT
    _, opts, _ = negotiated(kb, events, policy=rule("connect"))
    assert not opts[1] & (Milter.P_NR_HELO | Milter.P_NR_MAIL)
    assert opts[1] & Milter.P_NR_CONN
    _, opts, _ = negotiated(kb, events, noreply=False)
    assert not opts[1] & NR_BITS


def test_no_reply_stages_answer_noreply(kb: KnowledgeBase, events: Recorder) -> None:
    """Where "no reply" was negotiated the callback returns NOREPLY; elsewhere CONTINUE."""
    m, _, ctx = negotiated(kb, events, policy=rule("rcpt", recipient=NOBODY))
    ctx._stage = Milter.M_ENVFROM
    assert m.envfrom("<a@b.test>") == Milter.NOREPLY
    ctx._stage = Milter.M_ENVRCPT
    assert m.envrcpt("<c@d.test>") == Milter.CONTINUE
    ctx._stage = Milter.M_EOM
    assert m.eom() == Milter.CONTINUE  # end of message always replies


# -- stage events ---------------------------------------------------------------------------


def test_stage_events_of_an_accepted_message(
    start: Callable[..., FakeMta], events: Recorder
) -> None:
    """One event per stage with the macros that matter, then one session summary."""
    ctx = start()
    assert ctx.rc == Milter.CONTINUE
    ctx._setsymval("{auth_authen}", "bob")
    ctx._setsymval("{auth_type}", "PLAIN")
    assert ctx._envfrom("<alice@example.com>", "SIZE=1234", "BODY=8BITMIME") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@local.test>") == Milter.CONTINUE  # Postfix: no queue id yet
    ctx._setsymval("i", "4AB1C2D3E")
    assert ctx._envrcpt("<carol@local.test>") == Milter.CONTINUE
    assert ctx._data() == Milter.CONTINUE
    assert ctx._eom() == Milter.CONTINUE
    ctx._close()
    stages = [(e["event"], e.get("stage")) for e in events.all()]
    assert stages == [
        ("stage", "connect"), ("stage", "helo"), ("stage", "mail"), ("stage", "rcpt"),
        ("stage", "rcpt"), ("stage", "data"), ("stage", "eom"), ("session", "close"),
    ]  # fmt: skip
    connect, helo, mail, rcpt1, rcpt2, data, eom, session = events.all()
    assert {e.get("session") for e in events.all()} == {connect.get("session")}
    assert all(e["source"] == "milter" and e.get("mta") == "postfix" for e in events.all())
    assert connect["macros"] == POSTFIX_CONNECT
    assert connect["mta_version"] == "3.7.11"
    assert connect.get("client_addr") == "192.0.2.7"
    assert connect.get("client_name") == "client.example"
    assert helo.get("helo") == "client.test"
    assert mail.get("sender") == "alice@example.com"
    assert mail["params"] == {"SIZE": "1234", "BODY": "8BITMIME"}
    assert mail["macros"]["{auth_authen}"] == "bob"
    assert rcpt1.get("queue_id") is None
    assert rcpt1.get("recipient") == "bob@local.test"
    assert rcpt2.get("queue_id") == data.get("queue_id") == eom.get("queue_id") == "4AB1C2D3E"
    assert eom["recipients"] == 2
    assert session["queue_ids"] == ["4AB1C2D3E"]
    assert session["messages"] == 1
    assert session["recipients_accepted"] == 2
    assert session["recipients_rejected"] == 0
    assert session["commands"] == {
        "connect": 1, "helo": 1, "mail": 1, "rcpt": 2, "data": 1, "eom": 1, "close": 1
    }  # fmt: skip
    assert session["errors"] == 0
    assert session["duration_ms"] >= 0


def test_abort_ends_the_transaction(start: Callable[..., FakeMta], events: Recorder) -> None:
    """RSET (abort): the next transaction starts clean."""
    ctx = start()
    ctx._setsymval("i", "AAA")
    ctx._envfrom("<a@example.com>")
    ctx._abort()  # FakeMta's abort also closes
    abort, session = events.all()[-2:]
    assert abort.get("stage") == "abort"
    assert abort.get("sender") == "a@example.com"
    assert session["aborted"] == 1
    assert session.get("sender") is None


@pytest.mark.parametrize(
    ("macros", "expected"),
    [
        (POSTFIX_CONNECT, ("postfix", "3.7.11")),
        ({"v": "8.17.1.9", "j": "mx", "{if_addr}": "192.0.2.1"}, ("sendmail", "8.17.1.9")),
        ({"j": "mx", "{if_addr}": "192.0.2.1"}, ("sendmail", None)),
        # what a real Sendmail 8.17.1.9 sent for our SMFIR_SETSYMLIST on a loopback listener
        # ({if_addr} is never set on loopback): v decides
        (
            {
                "j": "mx.sendmail.test",
                "v": "8.17.1.9",
                "{daemon_name}": "MTA-test",
                "{daemon_addr}": "127.0.0.1",
            },
            ("sendmail", "8.17.1.9"),
        ),
        ({"j": "mx", "{daemon_addr}": "127.0.0.1"}, ("postfix", None)),
        ({"j": "mx"}, ("sendmail", None)),
        ({}, (None, None)),
    ],
)
def test_mta_detection(macros: dict[str, str], expected: tuple[str | None, str | None]) -> None:
    """Postfix sends v ("Postfix 3.7.11") and {daemon_addr}; Sendmail {if_addr}, j without v."""
    assert detect_mta(macros) == expected


# -- recipients the MTA rejected ------------------------------------------------------------


def test_recipient_rejected_by_postfix(start: Callable[..., FakeMta], events: Recorder) -> None:
    """Postfix: enhanced code in {rcpt_host}, text in {rcpt_addr}, no 3-digit code."""
    ctx = start()
    ctx._envfrom("<a@example.com>")
    rcpt_rejected_by_mta(
        ctx, "5.1.1", "Recipient address rejected: User unknown in virtual mailbox table"
    )
    assert ctx._envrcpt("<nobody@local.test>") == Milter.CONTINUE
    clear_rejection(ctx)
    ctx._close()
    (reply,) = events.kind("reply")
    assert reply.get("direction") == "upstream"
    assert reply.get("stage") == "rcpt"
    assert reply["by"] == "mta"
    assert reply.get("recipient") == "nobody@local.test"
    assert reply.get("code") is None
    assert reply.get("enhanced") == "5.1.1"
    assert reply.get("class") == "permanent"
    assert reply.get("reason") == "user_unknown"
    assert (
        reply.get("text")
        == "5.1.1 Recipient address rejected: User unknown in virtual mailbox table"
    )
    assert reply.get("summary")
    assert reply.get("rule")
    assert not [e for e in events.kind("stage") if e.get("stage") == "rcpt"]
    (session,) = events.kind("session")
    assert (session["rejected_by_mta"], session["recipients_accepted"]) == (1, 0)


@pytest.mark.parametrize(
    "rcpt_addr",
    [
        "550 5.1.1 User unknown",  # what Sendmail 8.17.1.9 really sent (tests/integration)
        "550 5.1.1 <nobody@local.test>... User unknown",
    ],
)
def test_recipient_rejected_by_sendmail(
    start: Callable[..., FakeMta], events: Recorder, rcpt_addr: str
) -> None:
    """Sendmail: the whole reply in {rcpt_addr}, so the code is known; the text is that reply
    ({rcpt_host} repeats its enhanced code and is not put in front of it)."""
    ctx = start(macros={"j": "mx.test", "v": "8.17.1.9", "{daemon_addr}": "127.0.0.1"})
    ctx._envfrom("<a@example.com>")
    rcpt_rejected_by_mta(ctx, "5.1.1", rcpt_addr)
    ctx._envrcpt("<nobody@local.test>")
    (reply,) = events.kind("reply")
    assert reply.get("mta") == "sendmail"
    assert (reply.get("code"), reply.get("enhanced"), reply.get("reason")) == (
        550,
        "5.1.1",
        "user_unknown",
    )
    assert reply.get("text") == rcpt_addr


def test_relay_denied_rejected_by_postfix(start: Callable[..., FakeMta], events: Recorder) -> None:
    ctx = start()
    ctx._envfrom("<a@example.com>")
    rcpt_rejected_by_mta(ctx, "5.7.1", "Relay access denied")
    ctx._envrcpt("<x@elsewhere.example>")
    (reply,) = events.kind("reply")
    assert reply.get("reason") == "no_relaying"


# -- fail open ------------------------------------------------------------------------------


def test_a_raising_rule_fails_open(
    start: Callable[..., FakeMta], events: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in a callback: CONTINUE, and an error event with its type and message."""

    def broken(*args: object) -> PolicyRule | None:
        raise ZeroDivisionError("rule arithmetic")

    monkeypatch.setattr(mod, "match_rules", broken)
    ctx = start(policy=rule("rcpt"))
    ctx._envfrom("<a@example.com>")
    assert ctx._envrcpt("<b@local.test>") == Milter.CONTINUE
    assert ctx._reply is None
    ctx._close()
    (error,) = events.kind("error")
    assert error.get("stage") == "rcpt"
    assert error["exception"] == "ZeroDivisionError"
    assert error.get("text") == "ZeroDivisionError: rule arithmetic"
    assert error.get("session") == events.kind("session")[0]["session"]
    assert events.kind("session")[0]["errors"] == 1


@pytest.mark.parametrize(
    "callback", ["connect", "hello", "envfrom", "envrcpt", "data", "eom", "abort", "close"]
)
def test_every_callback_fails_open(
    callback: str, kb: KnowledgeBase, events: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever breaks inside any callback, the MTA gets CONTINUE."""

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("internal failure")

    monkeypatch.setattr(PolicyMilter, "_count", boom)
    m = PolicyMilter(MilterSettings(events.writer, kb))
    args: dict[str, tuple[object, ...]] = {
        "connect": ("host", 2, ("192.0.2.1", 25)), "hello": ("h",), "envfrom": ("<a@b>",),
        "envrcpt": ("<c@d>",),
    }  # fmt: skip
    assert getattr(m, callback)(*args.get(callback, ())) == Milter.CONTINUE
    (error,) = events.kind("error")
    assert error["exception"] == "RuntimeError"


def test_a_broken_event_stream_still_fails_open(
    kb: KnowledgeBase, capsys: pytest.CaptureFixture[str]
) -> None:
    """If even the error event cannot be written: CONTINUE and one stderr line, no traceback."""
    stream = io.StringIO()
    stream.close()
    m = PolicyMilter(MilterSettings(EventWriter(stream), kb))
    assert m.envfrom("<a@b.test>") == Milter.CONTINUE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("smtp-policy milter: mail: ")
    assert "Traceback" not in err


def test_uncaught_c_layer_error_is_recovered(kb: KnowledgeBase, events: Recorder) -> None:
    """pymilter cannot decode a non-UTF-8 HELO and never calls us: the hook records it."""
    m, _, ctx = negotiated(kb, events, noreply=False)
    ctx._stage = Milter.M_CONNECT
    m.connect("client", 2, ("192.0.2.1", 2525))
    ctx._stage = Milter.M_HELO
    try:
        b"h\xe9lo".decode()
    except UnicodeDecodeError as exc:
        mod.report_uncaught(exc, events.writer)
    error, helo = events.all()[-2:]
    assert (error["event"], error.get("stage"), error["exception"]) == (
        "error",
        "helo",
        "UnicodeDecodeError",
    )
    assert (helo.get("stage"), helo.get("helo")) == ("helo", "h\\xe9lo")


# -- policy replies -------------------------------------------------------------------------

HOSTILE = "Quota 100% used;\r\n550 5.0.0 injected line\nNUL\x00here\ttab, caf\u00e9 %s %%"


def test_policy_reject_is_sanitized_multiline(
    start: Callable[..., FakeMta], events: Recorder
) -> None:
    """CR/LF start new lines, NUL/controls go, % is doubled for libmilter, the code stays."""
    policy = rule(
        "rcpt",
        name="no-bob",
        recipient=(compile_pattern("bob@local.test"),),
        code=550,
        enhanced=EnhancedCode(5, 7, 1),
        text=HOSTILE,
        help_url="https://help.example/policy",
    )
    ctx = start(policy=policy)
    ctx._envfrom("<a@example.com>")
    assert ctx._envrcpt("<carol@local.test>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@local.test>") == Milter.REJECT
    code, xcode, *lines = ctx._reply
    assert (code, xcode) == ("550", "5.7.1")
    assert lines[:3] == [
        "Quota 100%% used;",
        "550 5.0.0 injected line",
        "NUL here tab, cafe %%s %%%%",
    ]
    assert lines[-1] == "More information: https://help.example/policy"
    for line in lines:
        assert not set(line) & {"\r", "\n", "\x00", "\t"}
        assert line.isascii() and line.isprintable()
        assert len(f"550-5.7.1 {line}\r\n".replace("%%", "%")) <= MAX_LINE_OCTETS
    (reply,) = events.kind("reply")
    assert reply["by"] == "policy"
    assert reply["action"] == "reject"
    assert reply.get("rule") == "no-bob"
    assert reply.get("recipient") == "bob@local.test"
    assert (reply.get("code"), reply.get("enhanced"), reply.get("class")) == (
        550,
        "5.7.1",
        "permanent",
    )
    assert reply["friendly"].splitlines()[0] == "Quota 100% used;"
    assert reply["friendly"].splitlines() == [x.replace("%%", "%") for x in lines]
    assert reply["text"].startswith(
        "550-5.7.1 Quota 100% used;\n550-5.7.1 550 5.0.0 injected line\n550-5.7.1 NUL here"
    )
    ctx._close()
    (session,) = events.kind("session")
    assert (session["recipients_accepted"], session["rejected_by_policy"]) == (1, 1)


def test_policy_reply_is_capped_at_32_lines(kb: KnowledgeBase) -> None:
    long = PolicyRule(
        "long", Stage.RCPT, RuleAction.REJECT, text="\n".join(f"line {i}" for i in range(100))
    )
    decision = render_decision(verdict_of(long), kb=kb, texts=None, context={})
    assert len(decision.lines) == 32


def test_tempfail_with_a_mismatched_enhanced_code(
    start: Callable[..., FakeMta], events: Recorder
) -> None:
    """A 4xx code with a 5.x.x enhanced code: the class follows the code (Postfix insists)."""
    policy = rule(
        "mail",
        RuleAction.TEMPFAIL,
        name="slow-down",
        code=451,
        enhanced=EnhancedCode(5, 7, 1),
        text="Try later",
        reason=Reason.RATE_LIMITED,
    )
    ctx = start(policy=policy)
    assert ctx._envfrom("<a@example.com>") == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.7.1")
    (reply,) = events.kind("reply")
    assert (reply.get("class"), reply.get("reason")) == ("transient", "rate_limited")


def test_default_codes_and_our_explanation(start: Callable[..., FakeMta], events: Recorder) -> None:
    """No code, no text: 550 5.7.1 with the core's summary and advice."""
    ctx = start(policy=rule("data", name="bare"))
    ctx._envfrom("<a@example.com>")
    ctx._envrcpt("<b@local.test>")
    assert ctx._data() == Milter.REJECT
    code, xcode, *lines = ctx._reply
    assert (code, xcode) == ("550", "5.7.1")
    assert lines and all(lines)
    assert events.kind("reply")[0]["summary"] in lines[0]


def test_connect_decision_answers_helo(start: Callable[..., FakeMta], events: Recorder) -> None:
    """No reply can be sent at connect: the decision is recorded, then answers HELO."""
    policy = rule(
        "connect",
        name="bad-net",
        client_network=(ipaddress.ip_network("192.0.2.7/32"),),
        code=554,
        enhanced=EnhancedCode(5, 7, 1),
        text="Your network is blocked",
    )
    ctx = start(policy=policy)
    assert ctx.rc == Milter.REJECT  # HELO got the reply
    assert ctx._reply[:3] == ("554", "5.7.1", "Your network is blocked")
    replies = events.kind("reply")
    assert [r.get("stage") for r in replies] == ["connect", "helo"]
    assert replies[0].get("friendly") is None  # recorded when decided, sent later
    assert replies[1]["friendly"].startswith("Your network is blocked")


def test_connect_decision_answers_mail_without_helo(kb: KnowledgeBase, events: Recorder) -> None:
    """A client that skips HELO meets the connect-time decision at MAIL (and every MAIL)."""
    policy = rule(
        "connect",
        RuleAction.TEMPFAIL,
        name="busy",
        code=421,
        enhanced=EnhancedCode(4, 7, 0),
        text="Too busy",
    )
    m, _, ctx = negotiated(kb, events, policy=policy)
    ctx._stage = Milter.M_CONNECT
    assert m.connect("client", 2, ("192.0.2.1", 2525)) == Milter.NOREPLY
    ctx._stage = Milter.M_ENVFROM
    for _ in range(2):
        assert m.envfrom("<a@example.com>") == Milter.TEMPFAIL
        assert ctx._reply[:3] == ("421", "4.7.0", "Too busy")
    assert [r.get("stage") for r in events.kind("reply")] == ["connect", "mail", "mail"]


def test_discard_at_rcpt(start: Callable[..., FakeMta], events: Recorder) -> None:
    ctx = start(policy=rule("rcpt", RuleAction.DISCARD, name="blackhole"))
    ctx._envfrom("<a@example.com>")
    assert ctx._envrcpt("<b@local.test>") == Milter.DISCARD
    (reply,) = events.kind("reply")
    assert (reply["action"], reply.get("code"), reply.get("friendly")) == ("discard", None, None)


def test_quarantine_holds_at_end_of_message(
    start: Callable[..., FakeMta], events: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[str] = []
    monkeypatch.setattr(
        FakeMta, "quarantine", lambda self, reason: held.append(reason), raising=False
    )
    policy = rule("mail", RuleAction.QUARANTINE, name="hold", reason=Reason.SPAM_DETECTED)
    ctx = start(policy=policy)
    assert ctx._envfrom("<a@example.com>") == Milter.CONTINUE
    ctx._envrcpt("<b@local.test>")
    assert ctx._eom() == Milter.CONTINUE
    assert held == ["smtp-policy rule hold"]
    (reply,) = events.kind("reply")
    assert (reply["action"], reply.get("reason")) == ("quarantine", "spam_detected")


def test_a_failing_setreply_keeps_the_verdict(
    start: Callable[..., FakeMta], events: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libmilter refusing our text (MilterError) must not turn a reject into an accept."""

    def refuse(self: FakeMta, *args: object) -> None:
        raise Milter.error("cannot set reply")

    ctx = start(policy=rule("rcpt"))
    monkeypatch.setattr(FakeMta, "setreply", refuse)
    ctx._envfrom("<a@example.com>")
    assert ctx._envrcpt("<b@local.test>") == Milter.REJECT
    assert [e["event"] for e in events.all()[-2:]] == ["error", "reply"]


def test_factory_counts_sessions_and_swaps_settings(kb: KnowledgeBase, events: Recorder) -> None:
    settings = MilterSettings(events.writer, kb)
    factory = MilterFactory(settings)
    first = factory()
    assert factory.active == 1
    factory.replace(MilterSettings(events.writer, kb, noreply=False))
    second = factory()
    assert (first._settings.noreply, second._settings.noreply) == (True, False)
    first.close()
    second.close()
    assert factory.active == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"caf\xc3\xa9", "café"),
        (b"bad\xff", "bad\\xff"),
        ("bad\udcff", "bad\\xff"),  # pymilter's surrogateescape
        ("a\x00b", "a\x00b"),  # JSON escapes it
    ],
)
def test_text_of(value: str | bytes, expected: str) -> None:
    assert text_of(value) == expected
    json.dumps(text_of(value)).encode("utf-8")


def test_text_of_bounds_long_values() -> None:
    text = text_of("a" * 10_000)
    assert len(text) < 4200
    assert text.endswith("...[5904 more]")


# -- wiring to the configuration -------------------------------------------------------------


def test_policy_from_configured_rules(
    tmp_path: Path, start: Callable[..., FakeMta], events: Recorder
) -> None:
    """[[rules]] and [texts] from a real config file decide and word the reply."""
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        '[texts]\nhelp_url = "https://help.example/{reason}"\n'
        '[[rules]]\nname = "no-spam"\nstage = "mail"\nsender = ["*@spam.example"]\n'
        'action = "reject"\ncode = 554\nenhanced = "5.7.1"\nreason = "blocked"\n'
        'text = "No mail from {sender}, 100% sure.\\nMore information: {help_url}"\n'
        '[[rules]]\nname = "trusted"\nstage = "connect"\nclient_network = ["198.51.100.0/24"]\n'
        'action = "accept"\n'
    )
    config = load_config(config_file)
    policy = policy_from_rules(config.rules)
    assert policy.stages == {"mail", "connect"}
    assert policy.reply_stages() == {"mail"}  # accept at connect needs no reply
    ctx = start(policy=policy)
    ctx._priv._settings = replace(ctx._priv._settings, texts=config.texts)
    assert ctx._envfrom("<eve@spam.example>") == Milter.REJECT
    assert ctx._reply == (
        "554",
        "5.7.1",
        "No mail from eve@spam.example, 100%% sure.",
        "More information: https://help.example/blocked",
    )
    assert ctx._envfrom("<eve@fine.example>") == Milter.CONTINUE
    (reply,) = events.kind("reply")
    assert (reply.get("rule"), reply.get("reason"), reply.get("code")) == (
        "no-spam",
        "blocked",
        554,
    )


def test_an_accept_rule_shields_the_session(kb: KnowledgeBase, events: Recorder) -> None:
    """accept at connect: recorded, and no later rule of the session applies."""
    policy = policy_from_rules(
        [
            PolicyRule("trusted", Stage.CONNECT, RuleAction.ACCEPT),
            PolicyRule("no-mail", Stage.MAIL, RuleAction.REJECT),
        ]
    )
    m, _, ctx = negotiated(kb, events, policy=policy)
    ctx._stage = Milter.M_CONNECT
    m.connect("client", 2, ("198.51.100.7", 2525))
    ctx._stage = Milter.M_ENVFROM
    assert m.envfrom("<a@example.com>") == Milter.CONTINUE
    (reply,) = events.kind("reply")
    assert (reply["action"], reply.get("rule"), reply.get("code")) == ("accept", "trusted", None)


def test_the_rules_see_the_sessions_facts(kb: KnowledgeBase, events: Recorder) -> None:
    """The milter hands the rules what it knows at each stage, as the core's RuleFacts."""
    m, _, ctx = negotiated(kb, events, noreply=False)
    ctx._stage = Milter.M_CONNECT
    m.connect("client", 2, ("192.0.2.1", 2525))
    ctx._stage = Milter.M_ENVFROM
    ctx._setsymval("{auth_authen}", "alice")
    m.envfrom("<>", "SIZE=12")
    facts = m.facts("mail")
    assert facts == RuleFacts(client_addr="192.0.2.1", sender="<>", size=12, authenticated=True)
    assert m.facts("rcpt", "<b@local.test>").recipient == "<b@local.test>"


# -- the command's helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "libmilter"),
    [
        ("inet:8895@127.0.0.1", "inet:8895@127.0.0.1"),
        ("inet:127.0.0.1:8895", "inet:8895@127.0.0.1"),
        ("inet6:8895@::1", "inet6:8895@::1"),
        ("unix:/run/milter.sock", "unix:/run/milter.sock"),
        ("local:/run/milter.sock", "unix:/run/milter.sock"),
    ],
)
def test_listen_addresses(text: str, libmilter: str) -> None:
    assert ListenAddress.parse(text).libmilter() == libmilter


def test_a_stale_socket_is_replaced_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(ConfigError, match="another process is listening"):
            command._remove_stale_socket(str(path))
    finally:
        live.close()
    command._remove_stale_socket(str(path))  # nobody listens any more: removed
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="no socket"):
        command._remove_stale_socket(str(path))
