"""One rule, one decision: the milter and the policy server answer a rule the same way.

Each case feeds the same rules and the same session facts to the milter (driven by pymilter's
fake MTA, wired as ``smtp-policy milter`` wires it) and to the policy server, and compares
what reaches the client: the code, the enhanced code, the reason and the text.
"""

from __future__ import annotations

import io
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import Milter
import pytest
from Milter.testctx import TestCtx as FakeMta  # renamed: pytest would collect "Test*"

from smtp_policy.adapters.milter import MilterFactory
from smtp_policy.adapters.policy_server import PolicyService
from smtp_policy.commands import milter as milter_command
from smtp_policy.config import Config
from smtp_policy.core.model import EnhancedCode, Reason
from smtp_policy.core.policy import PolicyRule, RuleAction
from smtp_policy.core.stages import Stage
from smtp_policy.core.texts import TextsConfig, TextSet
from smtp_policy.data import default_knowledge
from smtp_policy.emit import EventWriter

CLIENT = "192.0.2.7"
SENDER = "alice@example.org"
RECIPIENT = "bob@local.test"
#: The policy server's protocol_state for each stage (Postfix's spelling).
PROTOCOL_STATE = {
    Stage.CONNECT: "CONNECT",
    Stage.HELO: "EHLO",
    Stage.MAIL: "MAIL",
    Stage.RCPT: "RCPT",
    Stage.DATA: "DATA",
    Stage.EOM: "END-OF-MESSAGE",
}
NR_BITS = (
    Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT | Milter.P_NR_DATA
)


@dataclass(frozen=True)
class Answer:
    """What the client learns of a decision (``action`` is the access(5) verb or "reply")."""

    action: str
    code: int | None = None
    enhanced: str | None = None
    reason: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class Case:
    """One rule (at ``stage``) and the ``[texts]`` it is worded with; ``expected`` pins codes."""

    rule: PolicyRule
    texts: TextsConfig = field(default_factory=TextsConfig)
    expected: Answer | None = None

    def config(self) -> Config:
        return Config(rules=(self.rule,), texts=self.texts)


def reply_rule(action: RuleAction = RuleAction.REJECT, **keys: Any) -> PolicyRule:
    return PolicyRule(
        name=keys.pop("name", "r"), stage=keys.pop("stage", Stage.RCPT), action=action, **keys
    )


BY_REASON = TextsConfig(
    reason={Reason.RATE_LIMITED: TextSet(external="Slow down ({reason}, {code} {enhanced})")}
)
CODES_IN_TEXT = TextsConfig(default=TextSet(external="Refused: {code} {enhanced} {reason}"))
INTERNAL = TextsConfig(
    internal_networks=(ipaddress.ip_network("192.0.2.0/24"),),
    reason={Reason.BLOCKED: TextSet(external="Go away", internal="Ask IT about {recipient}")},
)

CASES = {
    "code-above-599": Case(
        reply_rule(code=650, enhanced=EnhancedCode(5, 7, 1)), expected=Answer("reply", 550, "5.7.1")
    ),
    "code-below-400": Case(
        reply_rule(RuleAction.TEMPFAIL, code=250), expected=Answer("reply", 451, "4.7.1")
    ),
    "enhanced-of-the-wrong-class": Case(
        reply_rule(RuleAction.TEMPFAIL, code=451, enhanced=EnhancedCode(5, 7, 1)),
        CODES_IN_TEXT,
        Answer("reply", 451, "4.7.1", "policy_violation", "Refused: 451 4.7.1 policy_violation"),
    ),
    "reject-enhanced-of-the-wrong-class": Case(
        reply_rule(code=554, enhanced=EnhancedCode(4, 7, 0)),
        CODES_IN_TEXT,
        Answer("reply", 554, "5.7.0", "rejected", "Refused: 554 5.7.0 rejected"),
    ),
    "reason-override": Case(
        reply_rule(code=550, enhanced=EnhancedCode(5, 1, 1), reason=Reason.RATE_LIMITED),
        expected=Answer("reply", 550, "5.1.1", "rate_limited"),
    ),
    "reject-defaults": Case(reply_rule(), expected=Answer("reply", 550, "5.7.1")),
    "tempfail-defaults": Case(
        reply_rule(RuleAction.TEMPFAIL), expected=Answer("reply", 451, "4.7.1")
    ),
    "discard": Case(
        reply_rule(RuleAction.DISCARD, reason=Reason.SPAM_DETECTED),
        expected=Answer("DISCARD", reason="spam_detected"),
    ),
    "quarantine": Case(
        reply_rule(RuleAction.QUARANTINE, stage=Stage.MAIL, reason=Reason.SPAM_DETECTED),
        expected=Answer("HOLD", reason="spam_detected"),
    ),
    "accept": Case(reply_rule(RuleAction.ACCEPT), expected=Answer("DUNNO")),
    "own-multi-line-text": Case(
        reply_rule(
            code=554,
            enhanced=EnhancedCode(5, 7, 1),
            text="No mail for {recipient} from {sender}, 100% sure.\nClient {client_addr}\n"
            "Reason: {reason}",
        ),
        expected=Answer(
            "reply",
            554,
            "5.7.1",
            text=f"No mail for {RECIPIENT} from {SENDER}, 100% sure. Client {CLIENT} "
            "Reason: policy_violation",
        ),
    ),
    "texts-by-reason": Case(
        reply_rule(RuleAction.TEMPFAIL, reason=Reason.RATE_LIMITED),
        BY_REASON,
        Answer("reply", 451, "4.7.1", "rate_limited", "Slow down (rate_limited, 451 4.7.1)"),
    ),
    "texts-by-reason-overriding-the-codes-reason": Case(
        reply_rule(code=550, enhanced=EnhancedCode(5, 1, 1), reason=Reason.RATE_LIMITED),
        BY_REASON,
        Answer("reply", 550, "5.1.1", "rate_limited", "Slow down (rate_limited, 550 5.1.1)"),
    ),
    "internal-audience": Case(
        reply_rule(reason=Reason.BLOCKED),
        INTERNAL,
        Answer("reply", 550, "5.7.1", "blocked", f"Ask IT about {RECIPIENT}"),
    ),
    "connect": Case(reply_rule(stage=Stage.CONNECT, code=554), expected=Answer("reply", 554)),
    "helo": Case(reply_rule(RuleAction.TEMPFAIL, stage=Stage.HELO), expected=Answer("reply", 451)),
    "mail": Case(reply_rule(stage=Stage.MAIL), expected=Answer("reply", 550)),
    "data": Case(reply_rule(stage=Stage.DATA), expected=Answer("reply", 550)),
    "end-of-message": Case(reply_rule(stage=Stage.EOM), expected=Answer("reply", 550)),
}


# -- the policy server's path -----------------------------------------------------------------


def policy_server_answer(case: Case) -> Answer:
    service = PolicyService(EventWriter(io.StringIO()), default_knowledge(), case.config())
    request = {
        "request": "smtpd_access_policy",
        "protocol_state": PROTOCOL_STATE[case.rule.stage],
        "client_address": CLIENT,
        "client_name": "client.example",
        "helo_name": "client.example",
        "sender": SENDER,
        "recipient": RECIPIENT if case.rule.stage is Stage.RCPT else "",
        "queue_id": "",
    }
    action = service.answer(request, "policy-1")
    decision = service.decision(request)
    reason = decision.reason.value if decision and decision.reason else None
    code, _, rest = action.partition(" ")
    if not code.isdigit():
        return Answer(action, reason=reason)
    enhanced, _, text = rest.partition(" ")
    return Answer("reply", int(code), enhanced, reason, text)


# -- the milter's path ------------------------------------------------------------------------


def milter_answer(case: Case, monkeypatch: pytest.MonkeyPatch) -> Answer:
    buffer = io.StringIO()
    settings = milter_command._settings(case.config(), EventWriter(buffer), noreply=False)
    monkeypatch.setattr(Milter, "factory", MilterFactory(settings))
    monkeypatch.setattr(FakeMta, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF & ~NR_BITS, 0, 0])
    held: list[str] = []
    monkeypatch.setattr(FakeMta, "quarantine", lambda self, why: held.append(why), raising=False)
    ctx = FakeMta()
    ctx._setsymval("j", "mx.test")
    steps: list[Callable[[], int]] = [
        lambda: ctx._connect(host="client.example", helo="client.example", ip=CLIENT),
        lambda: ctx._envfrom(f"<{SENDER}>"),
        lambda: ctx._envrcpt(f"<{RECIPIENT}>"),
        ctx._data,
        ctx._eom,
    ]
    rc = Milter.CONTINUE
    for step in steps:
        rc = step()
        if rc != Milter.CONTINUE:
            break
    events = [json.loads(line) for line in buffer.getvalue().splitlines()]
    (decided,) = [e for e in events if e["event"] == "reply" and e.get("by") == "policy"][-1:]
    reason = decided.get("reason")
    if rc == Milter.DISCARD:
        return Answer("DISCARD", reason=reason)
    if rc == Milter.CONTINUE:
        return Answer("HOLD" if held else "DUNNO", reason=reason)
    code, enhanced, *lines = ctx._reply
    text = " ".join(line.replace("%%", "%") for line in lines)
    return Answer("reply", int(code), enhanced, reason, text)


@pytest.mark.parametrize("name", list(CASES))
def test_the_milter_and_the_policy_server_decide_alike(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    ours = milter_answer(case, monkeypatch)
    theirs = policy_server_answer(case)
    assert ours == theirs
    expected = case.expected
    assert expected is not None
    assert ours.action == expected.action
    for pinned in ("code", "enhanced", "reason", "text"):
        if getattr(expected, pinned) is not None:
            assert getattr(ours, pinned) == getattr(expected, pinned), pinned
