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

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

import re2

from smtp_policy.core.classify import classify
from smtp_policy.core.explain import explain
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import DecidedBy, EnhancedCode, Explanation, Reason
from smtp_policy.core.networks import IPNetwork, in_networks
from smtp_policy.core.parse import parse_reply
from smtp_policy.core.rewrite import default_lines
from smtp_policy.core.sanitize import SafeReply, sanitize_reply
from smtp_policy.core.stages import ORDER, Stage
from smtp_policy.core.texts import (
    AUDIENCES,
    CONTEXT_KEYS,
    Audience,
    TextsConfig,
    render_rule_text,
    render_template,
    reply_values,
    select_template,
)


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
    sender: tuple[AdminPattern, ...] = ()
    recipient: tuple[AdminPattern, ...] = ()
    helo: tuple[AdminPattern, ...] = ()
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
    # The admin's rule decided, whatever its codes would say alone (events name it in ``rule``).
    return explain(replace(classification, decided_by=DecidedBy.RULE), kb)


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


#: A value (sender, recipient, HELO) is cut to this many characters before a pattern sees it;
#: an address is at most 256 (RFC 5321), a HELO name 255.
MAX_MATCHED_CHARS: Final = 1024
_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.case_sensitive = False
_RE2_OPTIONS.log_errors = False


@dataclass(frozen=True, slots=True)
class AdminPattern:
    """A rule's sender/recipient/HELO pattern as written (``source``), compiled by RE2, so
    that matching takes time linear in the value whatever the pattern."""

    source: str
    compiled: Any = field(repr=False, compare=False)

    def search(self, value: str) -> bool:
        """Whether the pattern is found in ``value`` (cut to :data:`MAX_MATCHED_CHARS`)."""
        return self.compiled.search(value[:MAX_MATCHED_CHARS]) is not None


def compile_pattern(text: str) -> AdminPattern:
    """A sender/recipient/HELO pattern: ``/regex/`` (searched) or a glob (whole value).

    Both ignore case. Raises ``re.error`` for a bad regular expression, and for one RE2
    cannot run (backreferences, lookarounds: what may take exponential time).
    """
    if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
        regex = text[1:-1]
        re.compile(regex, re.IGNORECASE)  # Python's words for plain syntax errors
    else:
        regex = _glob_regex(text)
    try:
        return AdminPattern(text, re2.compile(regex, _RE2_OPTIONS))
    except re2.error as exc:
        why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise re.error(
            f"not supported by the linear-time engine (RE2): {why} "
            "(backreferences and lookarounds are not)"
        ) from None


def _glob_regex(glob: str) -> str:
    """A shell glob (``*``, ``?``, ``[...]``, ``[!...]``) as an RE2 regex for the whole value."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        char, i = glob[i], i + 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and (end := _class_end(glob, i)) >= 0:
            body, i = glob[i:end], end + 1
            negate = body.startswith("!")
            body = body.removeprefix("!").replace("\\", "\\\\").replace("[", "\\[")
            body = body.replace("]", "\\]").replace("^", "\\^")
            out.append(f"[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(char))
    return r"(?s)\A" + "".join(out) + r"\z"


def _class_end(glob: str, start: int) -> int:
    """Where the ``[...]`` class opened before ``start`` ends (a leading ``!`` and ``]`` are
    part of it), or -1: then the ``[`` is a plain character, as in :mod:`fnmatch`."""
    at = start + (glob.startswith("!", start))
    at += glob.startswith("]", at)
    return glob.find("]", at)


def _network_ok(networks: tuple[IPNetwork, ...], client_addr: str) -> bool:
    return not networks or in_networks(client_addr, networks)


def _patterns_ok(patterns: tuple[AdminPattern, ...], value: str | None) -> bool:
    if not patterns:
        return True
    if value is None:
        return False
    bare = value.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1]
    return any(pattern.search(bare) for pattern in patterns)


# -- our own replies, recognised ---------------------------------------------------------------

#: Stands for a session value (sender, recipient, ...) while a rule's reply is turned into a
#: pattern: letters only, so cleaning and escaping leave it alone.
_SLOT = "QxSMTPPOLICYSLOTxQ"
_FORMATTER = string.Formatter()
#: A rule's words must have at least this many characters of their own (outside the session
#: values) before a reply is taken for the rule's: a text of only ``{sender}`` would let a
#: remote's address pass any Postfix rejection off as ours.
MIN_OWN_CHARS = 8
#: One line of a reply: code, continuation mark, optional enhanced code, text.
_REPLY_LINE = re.compile(r"(\d{3})(?:[ -]|\Z)(?:(\d\.\d{1,3}\.\d{1,3})(?: |\Z))?(.*)\Z")
#: The first line of a reply that cleanup logs without its code (``5.7.1 text``).
_UNCODED_LINE = re.compile(r"()(\d\.\d{1,3}\.\d{1,3})(?: |\Z)(.*)\Z")
#: Where a line of a multi-line reply starts: CRLF or LF, or the ``??`` Postfix logs for CRLF.
_LINE_BREAK = re.compile(r"\r?\n|\?\?(?=\d{3}[ -])")
#: What Postfix puts before the text of an access(5)-style reply (a policy service's):
#: ``<name>: Recipient address rejected: `` (``Client host``, ``Helo command``, ...).
_ACCESS_PREFIX = r"(?: <[^\r\n]*?>: [A-Z][A-Za-z-]*(?: [a-z-]+)? rejected:)?"


@dataclass(frozen=True, slots=True)
class OwnReply:
    """What one reply rule sends, as a pattern over the reply's text (lines joined by spaces).

    ``decision`` is the rule's decision without session values: its codes, reason and
    explanation are the same for every session.
    """

    decision: Decision
    pattern: re.Pattern[str]

    @property
    def rule(self) -> str:
        """The rule's name."""
        return self.decision.rule


def own_replies(
    rules: Iterable[PolicyRule], *, kb: KnowledgeBase, texts: TextsConfig | None
) -> tuple[OwnReply, ...]:
    """The replies the reply rules of a configuration send, to recognise them later.

    One pattern per rule and audience; a rule whose words are too few of its own
    (``MIN_OWN_CHARS``) gets none, so its replies are taken for anybody's.
    """
    out: list[OwnReply] = []
    for rule in rules:
        if rule.action not in REPLY_ACTIONS:
            continue
        verdict = verdict_of(rule)
        decision = replace(render_decision(verdict, kb=kb, texts=None, context={}), lines=())
        explanation = decision.explanation
        assert explanation is not None  # a reply verdict always has one
        seen: set[str] = set()
        for audience in AUDIENCES:
            pattern = _reply_pattern(verdict, explanation, texts, audience)
            if pattern is not None and pattern not in seen:
                seen.add(pattern)
                out.append(OwnReply(decision, re.compile(pattern)))
    return tuple(out)


def recognised_rule(own: Iterable[OwnReply], reply: str) -> tuple[str, Explanation] | None:
    """The name and explanation of the rule whose reply ``reply`` is, or None (see
    :func:`recognise_reply`); the maps server and ``preview`` give such a reply no footer."""
    found = recognise_reply(own, reply)
    if found is None or found.decision.explanation is None:
        return None
    return found.rule, found.decision.explanation


def recognise_reply(own: Iterable[OwnReply], reply: str) -> OwnReply | None:
    """The rule whose reply ``reply`` is (the whole reply, every line), or None.

    ``reply`` is the reply as Postfix hands it on: ``NNN-X.Y.Z text`` lines joined by CRLF or
    LF (a footer lookup, a milter reply) or by ``??`` (the mail log), or one line (a policy
    service's reply, after Postfix's ``<address>: Recipient address rejected:``). The codes
    must be the rule's (a log line of cleanup's has no basic code: the enhanced one must be);
    the text must be the rule's rendering, session values aside.
    """
    parsed = _reply_parts(reply)
    if parsed is None:
        return None
    code, enhanced, text = parsed
    for candidate in own:
        decision = candidate.decision
        if code not in (None, decision.code) or enhanced != str(decision.enhanced):
            continue
        if candidate.pattern.fullmatch(" " + text):  # each line's pattern starts with its space
            return candidate
    return None


def _reply_parts(reply: str) -> tuple[int | None, str | None, str] | None:
    """A reply's code (None: logged without), enhanced code and text (lines joined by single
    spaces), if every line carries the same codes."""
    lines = [line.strip() for line in _LINE_BREAK.split(reply) if line.strip()]
    if not lines:
        return None
    first = _REPLY_LINE.match(lines[0]) or _UNCODED_LINE.match(lines[0])
    if first is None:
        return None
    code, enhanced = first[1], first[2]
    texts = [first[3]]
    for line in lines[1:]:
        m = _REPLY_LINE.match(line)
        if m is None or m[1] != (code or m[1]) or m[2] != enhanced:
            return None
        code = m[1]
        texts.append(m[3])
    return int(code) if code else None, enhanced, " ".join(" ".join(texts).split())


def _reply_pattern(
    verdict: Verdict, explanation: Explanation, texts: TextsConfig | None, audience: Audience
) -> str | None:
    """The regular expression a rule's reply text matches, or None (too few words of its own).

    Each template line is rendered alone with every session value a slot: a slot matches
    any text on the line, and a line of session values only may be missing (it is left out
    when they are all empty). Each line's pattern starts with a space: it matches the text,
    its lines joined by spaces as :func:`_reply_parts` joins them, after one more space.
    """
    pieces: list[tuple[str, bool, int]] = []  # (pattern, may be missing, characters of ours)
    if texts is None:  # the rule's text as it is, then our summary: the same for everybody
        for line in default_reply_lines(verdict, explanation):
            for rendered in sanitize_reply(verdict.code or 550, verdict.enhanced, line).lines:
                pieces.append((re.escape(rendered), False, len(rendered.replace(" ", ""))))
    else:
        template = verdict.text or select_template(texts, explanation, audience)
        values = reply_values(texts, explanation, dict.fromkeys(CONTEXT_KEYS, _SLOT))
        for line in template.split("\n"):
            names = {name for _, name, _, _ in _FORMATTER.parse(line) if name}
            if not line.strip() or (names and not any(values.get(n) for n in names)):
                continue  # rendered empty, or left out for every session alike
            optional = bool(names) and not any(values.get(n) for n in names - CONTEXT_KEYS)
            for rendered in render_template(line, values, code=verdict.code or 550):
                ours = len(rendered.replace(_SLOT, "").replace(" ", ""))
                pieces.append((_line_pattern(rendered), optional, ours))
    if all(optional for _, optional, _ in pieces):  # one line of text and session values
        pieces = [(piece, False, ours) for piece, _, ours in pieces]
    if not pieces or sum(ours for _, optional, ours in pieces if not optional) < MIN_OWN_CHARS:
        return None
    body = "".join(f"(?: {p})?" if optional else f" {p}" for p, optional, _ in pieces)
    return _ACCESS_PREFIX + body


def _line_pattern(line: str) -> str:
    """One rendered line as a pattern: its words exactly, each slot any text (maybe none)."""
    escaped = re.escape(line)
    escaped = escaped.replace(r"\ " + _SLOT, r"(?:\ [^\r\n]*?)?")
    return escaped.replace(_SLOT, r"[^\r\n]*?")
