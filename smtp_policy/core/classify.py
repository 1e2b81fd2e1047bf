"""Decide the class and the reason of a reply.

Theory of operation: the class is what the sending side will do, so it comes from the codes
(the three-digit code first: it is what MTAs act on, even when an enhanced code of another
class disagrees), then from a rule that knows a code-less text ("Connection timed out" is
retried), else ``unknown``. The reason is a contest between candidates, each with a priority:
every rule whose phrase occurs in the text and whose constraints hold, the enhanced code's
registry entry, and the basic code's default. Text wins over generic codes, because a
"550 5.1.1 … too many recipients this hour" is a rate limit whatever the codes claim.
``decided_by`` names the winner: a rule, the enhanced code, the basic code, or (no code and
no rule) the bare text.
"""

from __future__ import annotations

from smtp_policy.core.knowledge import (
    PRIORITY_BASIC,
    PRIORITY_ENHANCED,
    PRIORITY_ENHANCED_SUBJECT,
    KnowledgeBase,
    Rule,
    normalize,
)
from smtp_policy.core.model import Classification, DecidedBy, Reason, Reply, ReplyClass

#: Rules are matched against at most this much of the text.
MAX_MATCH_CHARS = 4096

_CLASS_BY_DIGIT = {
    1: ReplyClass.TRANSIENT,  # 101/111: the client could not even connect; MTAs retry
    2: ReplyClass.SUCCESS,
    3: ReplyClass.INTERMEDIATE,
    4: ReplyClass.TRANSIENT,
    5: ReplyClass.PERMANENT,
}


def classify(reply: Reply, kb: KnowledgeBase) -> Classification:
    """Classify a parsed reply with the knowledge base."""
    klass = _class_from_codes(reply, kb)
    rule = _best_rule(reply, klass, kb)
    if klass is None:
        klass = _class_from_rule(rule, kb)
    if klass in (ReplyClass.SUCCESS, ReplyClass.INTERMEDIATE):
        if rule is not None and rule.reason is None:  # a known success text
            return _by_rule(reply, klass, rule)
        return Classification(reply, klass, None, decided_by=_present_code(reply))
    reason, priority, source = _reason_from_codes(reply, kb)
    if rule is not None and rule.reason is not None and rule.priority > priority:
        return _by_rule(reply, klass, rule)
    if reason is None:
        return Classification(reply, klass, Reason.UNDEFINED, decided_by=_present_code(reply))
    return Classification(reply, klass, reason, decided_by=source)


def _class_from_rule(rule: Rule | None, kb: KnowledgeBase) -> ReplyClass:
    """The class of a code-less reply: the rule's own, else its reason's code-less class."""
    if rule is None:
        return ReplyClass.UNKNOWN
    if rule.klass is not None:
        return rule.klass
    info = kb.reasons.get(rule.reason) if rule.reason is not None else None
    if info is not None and info.codeless_class is not None:
        return info.codeless_class
    return ReplyClass.UNKNOWN


def _by_rule(reply: Reply, klass: ReplyClass, rule: Rule) -> Classification:
    return Classification(
        reply, klass, rule.reason, rule.id, rule.provider, rule.help_url, DecidedBy.RULE
    )


def _present_code(reply: Reply) -> DecidedBy:
    """What set the class when no reason was found: the first code the reply has."""
    if reply.code is not None:
        return DecidedBy.CODE
    return DecidedBy.ENHANCED if reply.enhanced is not None else DecidedBy.TEXT


def _class_from_codes(reply: Reply, kb: KnowledgeBase) -> ReplyClass | None:
    if reply.code is not None:
        info = kb.basic.get(reply.code)
        return info.klass if info is not None else _CLASS_BY_DIGIT.get(reply.code // 100)
    if reply.enhanced is not None:
        return _CLASS_BY_DIGIT[reply.enhanced.klass]
    return None


def _best_rule(reply: Reply, klass: ReplyClass | None, kb: KnowledgeBase) -> Rule | None:
    if not reply.text and reply.command is None:
        return None
    text = normalize(reply.text[:MAX_MATCH_CHARS])
    best: Rule | None = None
    best_key = (-1, -1)
    candidates = kb.index.candidates(text)
    if reply.command is not None:
        candidates += [("", rule) for rule in kb.command_rules]
    for phrase, rule in candidates:
        key = (rule.priority, len(phrase))
        if key <= best_key or not _applies(rule, reply, klass, text):
            continue
        best, best_key = rule, key
    return best


def _applies(rule: Rule, reply: Reply, klass: ReplyClass | None, text: str) -> bool:
    if rule.codes and reply.code not in rule.codes:
        return False
    if rule.classes and klass is not None and klass not in rule.classes:
        return False
    if rule.enhanced and str(reply.enhanced) not in rule.enhanced:
        return False
    if rule.commands and (reply.command or "").lower() not in rule.commands:
        return False
    return rule.pattern is None or rule.pattern.search(text) is not None


def _reason_from_codes(reply: Reply, kb: KnowledgeBase) -> tuple[Reason | None, int, DecidedBy]:
    if reply.enhanced is not None:
        info = kb.enhanced_info(reply.enhanced)
        if info is not None and info.reason is not None:
            specific = info.key == reply.enhanced.key and reply.enhanced.detail != 0
            priority = PRIORITY_ENHANCED if specific else PRIORITY_ENHANCED_SUBJECT
            return info.reason, priority, DecidedBy.ENHANCED
    if reply.code is not None:
        basic = kb.basic.get(reply.code)
        if basic is not None and basic.reason is not None:
            return basic.reason, PRIORITY_BASIC, DecidedBy.CODE
    return None, 0, DecidedBy.TEXT
