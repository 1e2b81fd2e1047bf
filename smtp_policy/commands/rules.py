"""Try the admin rules ([[rules]] in the configuration) before going live.

`smtp-policy rules test --stage STAGE [facts]` asks the rules what the milter and the policy
service would decide for a session with these facts at that stage (the same decide()), and
prints which rule fires and its reply as the client would read it, or that none does. A fact
that is not known yet at the stage (a recipient at MAIL) is left out, as live, with a note.
Exits 0 whether or not a rule fires; a bad option value is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from smtp_policy.commands._options import add_config_option, ip_address
from smtp_policy.commands._serve import warning_printer
from smtp_policy.config import load_config
from smtp_policy.core.policy import (
    Decision,
    PolicyRule,
    RuleAction,
    RuleFacts,
    decide,
    known_at,
)
from smtp_policy.core.stages import Stage
from smtp_policy.core.texts import audience_of

HELP = "try the admin rules: which one fires for a session, and its reply"

#: Option name -> the match key whose fact it gives (for "not known yet at this stage").
_FACT_KEYS = {
    "client": "client_network",
    "helo": "helo",
    "sender": "sender",
    "recipient": "recipient",
    "size": "size_over",
    "authenticated": "authenticated",
}


#: What a rule that sends no reply does instead.
_NO_REPLY = {
    RuleAction.DISCARD: "the message is accepted and thrown away",
    RuleAction.QUARANTINE: "the message is accepted and held in the quarantine (hold) queue",
    RuleAction.ACCEPT: "the rest of the rules for what it covers are skipped",
}


def register(parser: argparse.ArgumentParser) -> None:
    """Add the rules subcommands."""
    sub = parser.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    test = sub.add_parser(
        "test",
        help="print which rule fires at a stage for the given facts, and its reply",
        description="Print which rule fires at STAGE for the given facts, and its reply.",
    )
    test.add_argument(
        "--stage", required=True, choices=[s.value for s in Stage], help="the SMTP stage"
    )
    test.add_argument("--client", metavar="IP", type=ip_address, help="the client's IP address")
    test.add_argument("--helo", metavar="NAME", help="the HELO/EHLO name")
    test.add_argument("--sender", metavar="ADDRESS", help='the envelope sender ("" for <>)')
    test.add_argument("--recipient", metavar="ADDRESS", help="the envelope recipient")
    test.add_argument("--size", metavar="N", type=_size, help="the message size in bytes")
    test.add_argument(
        "--authenticated", action="store_true", help="the client logged in (SMTP AUTH)"
    )
    test.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_option(test)


def _size(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}")
    return int(text)


@dataclass(frozen=True, slots=True)
class RuleTest:
    """What ``rules test`` found: the facts used, the notes, and the decision (None: no rule)."""

    stage: Stage
    facts: RuleFacts
    decision: Decision | None
    audience: str
    rules_at_stage: int
    notes: tuple[str, ...] = ()


def facts_at(stage: Stage, given: dict[str, object]) -> tuple[RuleFacts, list[str]]:
    """The facts the rules can see at ``stage`` from the options given, and a note per fact
    left out because it is not known yet there (``given`` maps option name to value)."""
    notes = []
    known: dict[str, object] = {}
    for option, value in given.items():
        if value is None or value is False:
            continue
        if known_at(_FACT_KEYS[option], stage):
            known[option] = value
        else:
            notes.append(f"--{option} is not known yet at stage {stage.value}: left out")
    facts = RuleFacts(
        client_addr=str(known.get("client", "")),
        sender=_str_or_none(known.get("sender")),
        recipient=_str_or_none(known.get("recipient")),
        size=int(str(known["size"])) if "size" in known else None,
        authenticated=bool(known.get("authenticated", False)),
        helo=_str_or_none(known.get("helo")),
    )
    return facts, notes


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    """Test the rules, and print."""
    from smtp_policy.data import default_knowledge

    config = load_config(args.config, on_warning=warning_printer("rules"))
    stage = Stage(args.stage)
    given = {option: getattr(args, option) for option in _FACT_KEYS}
    facts, notes = facts_at(stage, given)
    audience = audience_of(facts.client_addr, config.texts)
    context = {
        "recipient": (facts.recipient or "").strip("<>"),
        "sender": (facts.sender or "").strip("<>"),
        "client_addr": facts.client_addr,
    }
    decision = decide(
        config.rules,
        stage,
        facts,
        kb=default_knowledge(),
        texts=config.texts,
        context=context,
        audience=audience,
    )
    result = RuleTest(
        stage, facts, decision, audience, _count_at(config.rules, stage), tuple(notes)
    )
    print(json.dumps(result_dict(result), ensure_ascii=False) if args.json else render(result))
    return 0


def _count_at(rules: tuple[PolicyRule, ...], stage: Stage) -> int:
    return sum(1 for rule in rules if rule.stage is stage)


def result_dict(result: RuleTest) -> dict[str, object]:
    """The JSON object ``--json`` prints."""
    d = result.decision
    reply = d.reply() if d is not None else None
    return {
        "stage": result.stage.value,
        "fires": d is not None,
        "rule": d.rule if d is not None else None,
        "action": d.action.value if d is not None else None,
        "code": reply.code if reply is not None else None,
        "enhanced": str(reply.enhanced) if reply is not None and reply.enhanced else None,
        "reason": d.reason.value if d is not None and d.reason is not None else None,
        "reply": reply.wire().splitlines() if reply is not None else [],
        "audience": result.audience,
        "rules_at_stage": result.rules_at_stage,
        "notes": list(result.notes),
    }


def render(result: RuleTest) -> str:
    """The test's answer as text."""
    d = result.decision
    stage = result.stage.value
    if d is None:
        count = result.rules_at_stage
        out = [f"No rule fires at stage {stage} ({count} rule{'s' * (count != 1)} for this stage)."]
    else:
        reason = f", reason {d.reason.value}" if d.reason is not None else ""
        out = [f"Rule {d.rule!r} fires at stage {stage}: {d.action.value}{reason}"]
        reply = d.reply()
        if reply is None:
            out.append(f"  (no reply is sent: {_NO_REPLY[d.action]})")
        else:
            out.append(f"The client reads ({result.audience} audience):")
            out += [f"  {line}" for line in reply.wire().splitlines()]
    out += [f"Note: {note}" for note in result.notes]
    return "\n".join(out)
