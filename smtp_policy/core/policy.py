"""Admin policy rules and the one pure decision every adapter that applies them shares.

Theory of operation: a :class:`PolicyRule` belongs to one SMTP stage and holds match keys
(client networks, sender/recipient/HELO patterns, a size threshold, whether the client
authenticated). All keys a rule has must match (AND); within a key's list any entry may
match (OR); a key the rule leaves out matches anything. A fact that is not known yet (no
recipient at MAIL time, no size without SIZE=) makes a key that needs it fail. The first rule
of the stage that matches wins, in configuration order.

A decision is made in three steps, all pure: :func:`match_rules` finds the rule,
:func:`verdict_of` settles what it does (a reply code in 400-599, the enhanced code in the
code's class, the defaults 550 5.7.1 and 451 4.7.1), and :func:`render_decision` words its
reply (explained by the core; the rule's reason and help link win) and sanitizes it.
:func:`decide` does all three. No I/O here: the adapters gather the facts and carry the
:class:`Decision` out.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from smtp_policy.core.classify import classify
from smtp_policy.core.explain import explain
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import EnhancedCode, Explanation, Reason
from smtp_policy.core.networks import IPNetwork, in_networks
from smtp_policy.core.parse import parse_reply
from smtp_policy.core.rewrite import default_lines
from smtp_policy.core.sanitize import SafeReply, sanitize_reply
from smtp_policy.core.stages import ORDER, Stage
from smtp_policy.core.texts import Audience, TextsConfig, render_rule_text


class RuleAction(StrEnum):
    """What a matching rule does with the command or message."""

    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"
    QUARANTINE = "quarantine"
    ACCEPT = "accept"


#: Actions that send a 4xx/5xx reply (and so may carry code, enhanced and text).
REPLY_ACTIONS = frozenset({RuleAction.REJECT, RuleAction.TEMPFAIL})
#: The reply of a reject or tempfail rule that names no (usable) code.
DEFAULT_REPLIES: Final = {
    RuleAction.REJECT: (550, EnhancedCode(5, 7, 1)),
    RuleAction.TEMPFAIL: (451, EnhancedCode(4, 7, 1)),
}

#: The first stage at which each match key's fact is known.
KNOWN_FROM = {
    "client_network": Stage.CONNECT,
    "helo": Stage.HELO,
    "sender": Stage.MAIL,
    "authenticated": Stage.MAIL,
    "size_over": Stage.MAIL,
    "recipient": Stage.RCPT,
}


def known_at(key: str, stage: Stage) -> bool:
    """Whether the fact behind match key ``key`` can be known at ``stage``."""
    return ORDER.index(stage) >= ORDER.index(KNOWN_FROM[key])


@dataclass(frozen=True, slots=True)
class RuleFacts:
    """What an adapter knows about the session when it asks the rules.

    ``sender``/``recipient`` may carry angle brackets; the null sender is ``""``. ``None``
    means "not known at this stage".
    """

    client_addr: str = ""
    sender: str | None = None
    recipient: str | None = None
    size: int | None = None
    authenticated: bool = False
    helo: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ``[[rules]]`` entry, validated; empty match tuples mean "any"."""

    name: str
    stage: Stage
    action: RuleAction
    client_network: tuple[IPNetwork, ...] = ()
    sender: tuple[re.Pattern[str], ...] = ()
    recipient: tuple[re.Pattern[str], ...] = ()
    helo: tuple[re.Pattern[str], ...] = ()
    size_over: int | None = None
    authenticated: bool | None = None
    code: int | None = None
    enhanced: EnhancedCode | None = None
    reason: Reason | None = None
    text: str | None = None
    help_url: str | None = None  # a link for this rule's replies, over the knowledge's

    def matches(self, facts: RuleFacts) -> bool:
        """Whether every match key of this rule holds for ``facts`` (the stage aside)."""
        return (
            _network_ok(self.client_network, facts.client_addr)
            and _patterns_ok(self.sender, facts.sender)
            and _patterns_ok(self.recipient, facts.recipient)
            and _patterns_ok(self.helo, facts.helo)
            and (self.size_over is None or (facts.size is not None and facts.size > self.size_over))
            and (self.authenticated is None or self.authenticated == facts.authenticated)
        )


def match_rules(
    rules: Iterable[PolicyRule], stage: Stage | str, facts: RuleFacts
) -> PolicyRule | None:
    """The first rule for ``stage`` that matches ``facts``, or None."""
    wanted = Stage(stage)
    for rule in rules:
        if rule.stage is wanted and rule.matches(facts):
            return rule
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a matched rule does, its reply codes settled; the reply is not worded yet.

    ``code`` and ``enhanced`` are set for reject and tempfail only; ``text`` is the rule's
    own template (None: ``[texts]`` words the reply).
    """

    action: RuleAction
    rule: str
    code: int | None = None
    enhanced: EnhancedCode | None = None
    reason: Reason | None = None
    text: str | None = None
    help_url: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """A rule's decision as sent: for a reply, its codes, explanation and sanitized lines.

    ``reason`` is the reply's reason (the rule's when it names one); an action without a
    reply (discard, quarantine, accept) carries the rule's reason and nothing to send.
    """

    action: RuleAction
    rule: str
    code: int | None = None
    enhanced: EnhancedCode | None = None
    reason: Reason | None = None
    explanation: Explanation | None = None
    lines: tuple[str, ...] = ()

    def reply(self) -> SafeReply | None:
        """The reply to send, or None for an action that sends none."""
        if self.code is None:
            return None
        return SafeReply(self.code, self.enhanced, self.lines)


def verdict_of(rule: PolicyRule) -> Verdict:
    """A matched rule's verdict: a code outside 400-599 gives way to the action's default, and
    the enhanced code takes the code's class (Postfix refuses a reply whose classes differ)."""
    if rule.action not in REPLY_ACTIONS:
        return Verdict(rule.action, rule.name, reason=rule.reason)
    default_code, default_enhanced = DEFAULT_REPLIES[rule.action]
    code = rule.code if rule.code is not None and 400 <= rule.code <= 599 else default_code
    enhanced = rule.enhanced or default_enhanced
    if enhanced.klass != code // 100:
        enhanced = EnhancedCode(code // 100, enhanced.subject, enhanced.detail)
    return Verdict(rule.action, rule.name, code, enhanced, rule.reason, rule.text, rule.help_url)


def render_decision(
    verdict: Verdict,
    *,
    kb: KnowledgeBase,
    texts: TextsConfig | None,
    context: Mapping[str, str],
    audience: Audience = "external",
) -> Decision:
    """Word a verdict's reply for one session: explained, rendered, sanitized.

    ``texts`` None renders :func:`default_reply_lines`; otherwise the rule's own ``text`` or
    ``[texts]`` for ``audience``, with ``context`` filling the session placeholders.
    """
    if verdict.code is None:
        return Decision(verdict.action, verdict.rule, reason=verdict.reason)
    explanation = explain_verdict(verdict, kb)
    if texts is None:
        lines = default_reply_lines(verdict, explanation)
    else:
        lines = render_rule_text(verdict.text or None, texts, explanation, context, audience)
    reply = sanitize_reply(verdict.code, verdict.enhanced, lines)
    return Decision(
        verdict.action,
        verdict.rule,
        reply.code,
        reply.enhanced,
        explanation.classification.reason,
        explanation,
        reply.lines,
    )


def explain_verdict(verdict: Verdict, kb: KnowledgeBase) -> Explanation:
    """Explain a reply verdict from its codes; the rule's reason and help link win.

    A reason of the rule's own replaces the one the codes gave, and with it the knowledge
    rule that gave it (its wording would describe another reason).
    """
    codes = f"{verdict.code or ''} {verdict.enhanced or ''}".strip()
    reply = parse_reply(codes, kb.codebook)
    classification = classify(reply, kb)
    if verdict.reason is not None and verdict.reason is not classification.reason:
        classification = replace(classification, reason=verdict.reason, rule=None)
    if verdict.help_url:
        classification = replace(classification, help_url=verdict.help_url)
    return explain(classification, kb)


def default_reply_lines(verdict: Verdict, explanation: Explanation) -> list[str]:
    """Without ``[texts]``: the rule's text as it is, then our summary and help link."""
    return [*(verdict.text or "").splitlines(), *default_lines(explanation)]


def decide(
    rules: Iterable[PolicyRule],
    stage: Stage,
    facts: RuleFacts,
    *,
    kb: KnowledgeBase,
    texts: TextsConfig | None,
    context: Mapping[str, str],
    audience: Audience = "external",
) -> Decision | None:
    """The decision of the first rule for ``stage`` that matches ``facts``, or None."""
    rule = match_rules(rules, stage, facts)
    if rule is None:
        return None
    return render_decision(verdict_of(rule), kb=kb, texts=texts, context=context, audience=audience)


def compile_pattern(text: str) -> re.Pattern[str]:
    """A sender/recipient/HELO pattern: ``/regex/`` (searched) or a glob (whole value).

    Both ignore case. Raises ``re.error`` for a bad regular expression.
    """
    if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
        return re.compile(text[1:-1], re.IGNORECASE)
    return re.compile(r"\A" + fnmatch.translate(text), re.IGNORECASE)


def _network_ok(networks: tuple[IPNetwork, ...], client_addr: str) -> bool:
    return not networks or in_networks(client_addr, networks)


def _patterns_ok(patterns: tuple[re.Pattern[str], ...], value: str | None) -> bool:
    if not patterns:
        return True
    if value is None:
        return False
    bare = value.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1]
    return any(p.search(bare) for p in patterns)
