"""The milter's ``[milter] events`` modes: the session event's record of every stage."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import Milter
import pytest
from Milter.testctx import TestCtx as FakeMta  # renamed: pytest would collect "Test*"

from smtp_policy.adapters.milter import MilterFactory, MilterPolicy, MilterSettings
from smtp_policy.commands import milter as command
from smtp_policy.core.events import (
    MAX_SESSION_RECIPIENTS,
    MAX_SESSION_TRANSACTIONS,
    NAME_CAP,
    SESSION_TEXT_CAP,
    Event,
    EventKind,
    SessionReply,
    SessionSummary,
    SessionTransaction,
    Source,
)
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import EnhancedCode
from smtp_policy.core.policy import PolicyRule, RuleAction, compile_pattern
from smtp_policy.core.stages import Stage
from smtp_policy.data import default_knowledge
from smtp_policy.emit import EventWriter

Ev = dict[str, Any]
NR_BITS = (
    Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT | Milter.P_NR_DATA
)
POSTFIX_CONNECT = {"j": "mx.test", "v": "Postfix 3.7.11", "{daemon_addr}": "127.0.0.1"}
NO_BOB = PolicyRule(
    "no-bob",
    Stage.RCPT,
    RuleAction.REJECT,
    recipient=(compile_pattern("bob@local.test"),),
    code=550,
    enhanced=EnhancedCode(5, 7, 1),
    text="Not for bob.",
)


@pytest.fixture(name="kb", scope="module")
def _kb() -> KnowledgeBase:
    return default_knowledge()


@pytest.fixture(autouse=True)
def _fresh_testctx(monkeypatch: pytest.MonkeyPatch) -> None:
    """FakeMta's class-level option list, renewed; no "no reply" flags (see test_milter_unit)."""
    monkeypatch.setattr(FakeMta, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF & ~NR_BITS, 0, 0])


class Run:
    """A FakeMta session through a factory whose settings record in ``mode``."""

    def __init__(self, kb: KnowledgeBase, mode: str, policy: MilterPolicy | None = None) -> None:
        self.buffer = io.StringIO()
        settings = MilterSettings(
            EventWriter(self.buffer), kb, policy or MilterPolicy(), noreply=False, event_mode=mode
        )
        self.factory = MilterFactory(settings)

    def events(self, kind: str | None = None) -> list[Ev]:
        got = [json.loads(line) for line in self.buffer.getvalue().splitlines()]
        return [e for e in got if kind is None or e["event"] == kind]

    def connect(self, monkeypatch: pytest.MonkeyPatch) -> FakeMta:
        monkeypatch.setattr(Milter, "factory", self.factory)
        ctx = FakeMta()
        for name, value in POSTFIX_CONNECT.items():
            ctx._setsymval(name, value)
        ctx.rc = ctx._connect(host="client.example", helo="client.test", ip="192.0.2.7")
        return ctx


def rejected_by_mta(ctx: FakeMta, rcpt: str) -> int:
    """A recipient Postfix rejected itself (SMFIP_RCPT_REJ), then the macros cleared."""
    ctx._setsymval("{rcpt_mailer}", "error")
    ctx._setsymval("{rcpt_host}", "5.1.1")
    ctx._setsymval(
        "{rcpt_addr}", "Recipient address rejected: User unknown in virtual mailbox table"
    )
    rc: int = ctx._envrcpt(rcpt)
    for name in ("{rcpt_mailer}", "{rcpt_host}", "{rcpt_addr}"):
        ctx._macros.pop(name, None)
    return rc


def two_transactions(ctx: FakeMta) -> None:
    """One message to carol (bob refused by a rule, nobody by Postfix), then a second MAIL
    that the client leaves (close without end of message)."""
    ctx._envfrom("<alice@example.org>", "SIZE=321")
    ctx._setsymval("i", "4AB1C2D3E")
    assert ctx._envrcpt("<carol@local.test>") == Milter.CONTINUE
    assert rejected_by_mta(ctx, "<nobody@local.test>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@local.test>") == Milter.REJECT
    assert ctx._data() == Milter.CONTINUE
    assert ctx._eom() == Milter.CONTINUE
    ctx._macros.pop("i", None)
    ctx._envfrom("<>")
    assert ctx._envrcpt("<dave@local.test>") == Milter.CONTINUE
    ctx._close()


def test_session_mode_folds_the_stages_into_one_event(
    kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """session: the policy decision at once, then one session event with every outcome."""
    run = Run(kb, "session", MilterPolicy((NO_BOB,)))
    two_transactions(run.connect(monkeypatch))
    assert [(e["event"], e.get("by")) for e in run.events()] == [
        ("reply", "policy"),
        ("session", None),
    ]
    session = run.events("session")[0]
    assert session["session"] == run.events("reply")[0]["session"]
    assert (session["client_addr"], session["helo"], session["mta"]) == (
        "192.0.2.7",
        "client.test",
        "postfix",
    )
    assert session["counts"] == "connect=1 helo=1 mail=2 rcpt=2/4 data=1 eom=1"
    assert (session["rejected_by_mta"], session["rejected_by_policy"]) == (1, 1)
    assert session["replies"] == []
    first, second = session["transactions"]
    assert first == {
        "sender": "alice@example.org",
        "queue_id": "4AB1C2D3E",
        "size": 321,
        "recipients": [
            {"stage": "rcpt", "outcome": "accepted", "recipient": "carol@local.test"},
            {
                "stage": "rcpt",
                "outcome": "rejected",
                "recipient": "nobody@local.test",
                "by": "mta",
                "enhanced": "5.1.1",
                "class": "permanent",
                "reason": "user_unknown",
                "rule": first["recipients"][1]["rule"],
                "text": "5.1.1 Recipient address rejected: User unknown in virtual mailbox table",
            },
            {
                "stage": "rcpt",
                "outcome": "rejected",
                "recipient": "bob@local.test",
                "by": "policy",
                "action": "reject",
                "code": 550,
                "enhanced": "5.7.1",
                "class": "permanent",
                "reason": first["recipients"][2]["reason"],
                "rule": "no-bob",
                "text": first["recipients"][2]["text"],
            },
        ],
        "end": "eom",
    }
    assert first["recipients"][1]["rule"].startswith("postfix.")
    assert first["recipients"][2]["text"].startswith("550-5.7.1 Not for bob.\n550 5.7.1 ")
    assert second == {
        "sender": "",
        "recipients": [{"stage": "rcpt", "outcome": "accepted", "recipient": "dave@local.test"}],
        "end": "open",
    }


def test_both_mode_writes_the_stages_and_the_record(
    kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(kb, "both", MilterPolicy((NO_BOB,)))
    two_transactions(run.connect(monkeypatch))
    stages = [e["stage"] for e in run.events("stage")]
    assert stages == ["connect", "helo", "mail", "rcpt", "rcpt", "data", "eom", "mail", "rcpt"]
    assert [e["by"] for e in run.events("reply")] == ["mta", "policy"]
    (session,) = run.events("session")
    assert [t["end"] for t in session["transactions"]] == ["eom", "open"]


def test_stages_mode_keeps_the_session_event_as_it_was(
    kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stages (the default): the per-stage events, and a session event of counters only."""
    run = Run(kb, "stages", MilterPolicy((NO_BOB,)))
    two_transactions(run.connect(monkeypatch))
    assert len(run.events("stage")) == 9
    (session,) = run.events("session")
    assert "transactions" not in session and "replies" not in session
    assert session["counts"] == "connect=1 helo=1 mail=2 rcpt=2/4 data=1 eom=1"
    assert session["recipients_rejected"] == 2


def test_connect_decisions_in_the_record(
    kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connect rule is recorded when decided and again when it answers HELO."""
    rule = PolicyRule("bad-net", Stage.CONNECT, RuleAction.TEMPFAIL)
    run = Run(kb, "session", MilterPolicy((rule,)))
    ctx = run.connect(monkeypatch)
    assert ctx.rc == Milter.TEMPFAIL  # FakeMta ends the session after HELO's answer
    (session,) = run.events("session")
    assert [(r["stage"], r["outcome"], r["rule"]) for r in session["replies"]] == [
        ("connect", "tempfailed", "bad-net"),
        ("helo", "tempfailed", "bad-net"),
    ]
    assert session["replies"][1]["code"] == 451
    assert (session["transactions"], session["counts"]) == ([], "connect=1 helo=0/1")
    assert len(run.events("reply")) == 2  # every decision also at once


def test_mail_decisions_and_aborts_in_the_record(
    kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = PolicyRule("spam", Stage.MAIL, RuleAction.REJECT, code=554)
    run = Run(kb, "session", MilterPolicy((rule,)))
    ctx = run.connect(monkeypatch)
    assert ctx._envfrom("<a@spam.example>") == Milter.REJECT
    ctx._abort()  # FakeMta's abort also closes
    (session,) = run.events("session")
    (tx,) = session["transactions"]
    assert (tx["sender"], tx["end"], tx["recipients"]) == ("a@spam.example", "abort", [])
    assert [(r["stage"], r["outcome"], r["code"]) for r in tx["replies"]] == [
        ("mail", "rejected", 554)
    ]
    assert session["counts"] == "connect=1 helo=1 mail=0/1 abort=1"
    assert len(run.events("reply")) == 1


def test_the_record_is_capped(kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_SESSION_TRANSACTIONS transactions and MAX_SESSION_RECIPIENTS recipients;
    the rest are counted."""
    run = Run(kb, "session")
    ctx = run.connect(monkeypatch)
    for n in range(MAX_SESSION_TRANSACTIONS + 3):
        ctx._envfrom(f"<s{n}@example.org>")
        for r in range(15):
            ctx._envrcpt(f"<r{r}@local.test>")
        ctx._eom()
    ctx._close()
    (session,) = run.events("session")
    transactions = session["transactions"]
    assert len(transactions) == MAX_SESSION_TRANSACTIONS
    assert session["transactions_omitted"] == 3
    kept = sum(len(t["recipients"]) for t in transactions)
    omitted = sum(t.get("recipients_omitted", 0) for t in transactions)
    assert kept == MAX_SESSION_RECIPIENTS
    assert kept + omitted == 15 * MAX_SESSION_TRANSACTIONS
    assert session["messages"] == MAX_SESSION_TRANSACTIONS + 3
    assert session["recipients_accepted"] == 15 * (MAX_SESSION_TRANSACTIONS + 3)


def test_a_record_is_written_with_every_events_cap() -> None:
    """Hostile strings in a record: cut, one line, brackets gone, text at SESSION_TEXT_CAP."""
    hostile = "x\u2028" * 5000
    record = SessionSummary(
        commands={"connect": 1},
        counts="connect=1",
        recipients_accepted=0,
        rejected_by_mta=1,
        rejected_by_policy=0,
        messages=0,
        aborted=0,
        errors=0,
        queue_ids=("Q" * 5000,),
        duration_ms=1.0,
        transactions=(
            SessionTransaction(
                "open",
                sender=f"<{hostile}>",
                recipients=(
                    SessionReply("rcpt", "rejected", recipient="<b@x.test>", text=hostile),
                ),
            ),
        ),
    )
    buffer = io.StringIO()
    event = Event(EventKind.SESSION, Source.MILTER, datetime.now(UTC), session_record=record)
    EventWriter(buffer).emit(event)
    (line,) = buffer.getvalue().splitlines()
    written = json.loads(line)
    (tx,) = written["transactions"]
    assert tx["recipients"][0]["recipient"] == "b@x.test"
    assert len(tx["recipients"][0]["text"]) == SESSION_TEXT_CAP
    assert len(tx["sender"]) == NAME_CAP and len(written["queue_ids"][0]) <= 4096
    with pytest.raises(ValueError, match="record"):
        Event(
            EventKind.SESSION,
            Source.MILTER,
            datetime.now(UTC),
            extra={"x": 1},
            session_record=record,
        )


def test_reload_changes_the_mode_for_new_sessions(
    kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGHUP: ``[milter] events`` is read again; ``--events-mode`` wins over it."""
    run = Run(kb, "stages")
    running = run.factory()
    config = tmp_path / "config.toml"
    config.write_text('[milter]\nevents = "session"\n')
    command._reload(str(config), run.factory)
    assert run.factory.settings.event_mode == "session"
    assert running._settings.event_mode == "stages"  # a running session keeps its snapshot
    reloaded = run.events("reloaded")[-1]
    assert reloaded["events_mode"] == "session"
    command._reload(str(config), run.factory, "both")
    assert run.factory.settings.event_mode == "both"
    new: Callable[[], object] = run.factory
    assert new()._settings.event_mode == "both"  # type: ignore[attr-defined]
