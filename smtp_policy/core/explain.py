"""Put a classification into words: a summary, an explanation, what to do and who acts."""

from __future__ import annotations

import textwrap
from functools import lru_cache
from json.encoder import encode_basestring

from smtp_policy.core.classify import classify
from smtp_policy.core.knowledge import KnowledgeBase, Rule
from smtp_policy.core.model import (
    Actor,
    Classification,
    DecidedBy,
    Explanation,
    Reason,
    ReplyClass,
)
from smtp_policy.core.parse import parse_reply
from smtp_policy.core.sanitize import json_safe, printable

#: How many distinct reply texts :func:`explain_text` remembers (least recently used go first).
EXPLAIN_CACHE_SIZE = 4096
#: How many distinct verdicts :func:`explain` keeps worded (codes, class, reason, rule) and
#: :func:`explanation_json` keeps encoded (class, reason, words...), each.
VERDICT_CACHE_SIZE = 1024


def explain_text(text: str, kb: KnowledgeBase) -> Explanation:
    """Parse, classify and explain one reply in any form :func:`parse_reply` reads.

    Each distinct text is worked out once per knowledge base: the answer depends on nothing
    else, and an Explanation is immutable, so a remembered one is handed out again.
    """
    return _explain_cached(text, _Same(kb))


def forget_explanations() -> None:
    """Empty the caches of :func:`explain_text`, :func:`explain` and :func:`explanation_json`
    (benchmarks start each round cold)."""
    _explain_cached.cache_clear()
    _wordings.clear()
    _verdict_json.cache_clear()


class _Same:
    """A knowledge base as a cache key: equal only to itself (the base is not hashable)."""

    __slots__ = ("kb",)

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb

    def __hash__(self) -> int:
        return id(self.kb)  # unique while cached: the cache entry keeps the base alive

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.kb is self.kb


@lru_cache(maxsize=EXPLAIN_CACHE_SIZE)
def _explain_cached(text: str, kb: _Same) -> Explanation:
    return explain(classify(parse_reply(text, kb.kb.codebook), kb.kb), kb.kb)


def explanation_json(explanation: Explanation) -> str:
    """``json_text(explanation.to_dict())``, byte for byte, built faster.

    The fields that come from the knowledge base (class, reason, the words, rule, titles)
    are the same for many replies: they are encoded once per distinct set of them, and only
    the reply's own fields (its text, codes, form, command and server) per call.
    """
    c = explanation.classification
    r = c.reply
    verdict, titles = _verdict_json(
        (
            c.klass,
            c.reason,
            explanation.summary,
            explanation.explanation,
            explanation.action,
            explanation.actor,
            c.provider,
            c.help_url,
            c.rule,
            c.decided_by,
            explanation.code_title,
            explanation.code_meaning,
            explanation.enhanced_title,
            explanation.enhanced_meaning,
        )
    )
    return json_safe(
        "".join(
            (
                '{"reply": ',
                encode_basestring(r.raw),
                ', "code": ',
                "null" if r.code is None else str(r.code),
                ', "enhanced": ',
                "null" if r.enhanced is None else f'"{r.enhanced}"',
                verdict,
                ', "text": ',
                encode_basestring(r.text),
                ', "form": "',
                r.form.value,
                '", "command": ',
                _json_string(r.command),
                ', "remote": ',
                _json_string(r.remote),
                titles,
            )
        )
    )


def _json_string(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


#: What :func:`explanation_json` takes from the knowledge base, in :meth:`Explanation.to_dict`'s
#: order: class, reason, summary, explanation, action, actor, provider, help_url, rule,
#: decided_by, code_title, code_meaning, enhanced_title, enhanced_meaning.
_Verdict = tuple[
    ReplyClass,
    Reason | None,
    str,
    str,
    str,
    Actor,
    str | None,
    str | None,
    str | None,
    DecidedBy,
    str | None,
    str | None,
    str | None,
    str | None,
]


@lru_cache(maxsize=VERDICT_CACHE_SIZE)
def _verdict_json(fields: _Verdict) -> tuple[str, str]:
    """The knowledge base's fields of :meth:`Explanation.to_dict` as JSON, in its order: those
    between ``enhanced`` and ``text``, and those after ``remote`` with the closing brace."""
    (
        klass,
        reason,
        summary,
        explanation,
        action,
        actor,
        provider,
        help_url,
        rule,
        decided_by,
        code_title,
        code_meaning,
        enhanced_title,
        enhanced_meaning,
    ) = fields
    verdict = (
        f', "class": "{klass.value}", "reason": '
        f"{_json_string(reason.value if reason else None)}"
        f', "summary": {encode_basestring(summary)}'
        f', "explanation": {encode_basestring(explanation)}'
        f', "action": {encode_basestring(action)}'
        f', "actor": "{actor.value}"'
        f', "provider": {_json_string(provider)}'
        f', "help_url": {_json_string(help_url)}'
        f', "rule": {_json_string(rule)}'
        f', "decided_by": "{decided_by.value}"'
    )
    titles = (
        f', "code_title": {_json_string(code_title)}'
        f', "code_meaning": {_json_string(code_meaning)}'
        f', "enhanced_title": {_json_string(enhanced_title)}'
        f', "enhanced_meaning": {_json_string(enhanced_meaning)}}}'
    )
    return verdict, titles


def explain(classification: Classification, kb: KnowledgeBase) -> Explanation:
    """Explain a classification in plain language.

    The words of the rule that decided come first, the reason's fill in what it leaves out;
    a rule's own meaning of the enhanced code replaces the registry's. The words depend on
    the reply's codes, the class, the reason and the rule alone, and the knowledge base:
    each distinct set of them is worded once (a bounded cache).
    """
    reply = classification.reply
    key = (
        _Same(kb),
        reply.code,
        reply.enhanced,
        classification.klass,
        classification.reason,
        classification.rule,
    )
    wording = _wordings.get(key)
    if wording is None:
        if len(_wordings) >= VERDICT_CACHE_SIZE:
            _wordings.clear()
        wording = _wordings[key] = _wording(classification, kb)
    return Explanation(classification, *wording)


#: What :func:`explain` adds to a classification, in :class:`Explanation`'s order: summary,
#: explanation, action, actor, code_meaning, enhanced_meaning, code_title, enhanced_title.
_Wording = tuple[str, str, str, Actor, str | None, str | None, str | None, str | None]
_wordings: dict[tuple[object, ...], _Wording] = {}


def _wording(classification: Classification, kb: KnowledgeBase) -> _Wording:
    reply = classification.reply
    rule = kb.rule_by_id.get(classification.rule) if classification.rule else None
    code_title = code_meaning = enhanced_title = enhanced_meaning = None
    if reply.code is not None and reply.code in kb.basic:
        info = kb.basic[reply.code]
        code_title, code_meaning = info.title, f"{info.title}: {info.meaning}"
    if reply.enhanced is not None:
        if rule is not None and rule.enhanced_title and rule.enhanced_meaning:
            enhanced_title = rule.enhanced_title
            enhanced_meaning = f"{rule.enhanced_title}: {rule.enhanced_meaning}"
        elif (enh := kb.enhanced_info(reply.enhanced)) is not None:
            enhanced_title, enhanced_meaning = enh.title, f"{enh.title}: {enh.meaning}"
    summary, explanation, action, actor = _words(classification, kb, rule, code_meaning)
    return (
        summary,
        explanation,
        action,
        actor,
        code_meaning,
        enhanced_meaning,
        code_title,
        enhanced_title,
    )


def _words(
    c: Classification, kb: KnowledgeBase, rule: Rule | None, code_meaning: str | None
) -> tuple[str, str, str, Actor]:
    code_summary = _code_summary(c, kb)
    if c.klass is ReplyClass.SUCCESS:
        accepted = rule.summary if rule is not None and rule.summary else None
        return (
            accepted or code_summary or "The server accepted the command",
            code_meaning or "The reply reports success.",
            "Nothing to do.",
            Actor.NOBODY,
        )
    if c.klass is ReplyClass.INTERMEDIATE:
        return (
            code_summary or "The server waits for more input",
            code_meaning or "The reply asks the client to go on.",
            "Nothing to do: the client sends what the server asked for.",
            Actor.NOBODY,
        )
    if c.reason is None:  # unreachable: failures always carry a reason
        return ("Unrecognised reply", "", "", Actor.POSTMASTER)
    if (
        c.klass is ReplyClass.UNKNOWN
        and c.reply.code is None
        and c.reply.enhanced is None
        and c.rule is None
    ):
        return (
            "Not a recognisable SMTP reply",
            "The text carries no reply code and matches nothing smtp_policy knows.",
            "Look at the full log line or bounce for the server's actual reply.",
            Actor.POSTMASTER,
        )
    info = kb.reasons[c.reason]
    summary, explanation = _code_summary(c, kb) or info.summary, info.explanation
    action, actor = info.action, info.actor
    if rule is not None and rule.reason is c.reason:
        summary = rule.summary or summary
        explanation = rule.explanation or explanation
        if rule.action is not None or rule.actor is not None:
            # A rule's advice holds whatever the class: a retry does not fix what it names.
            return summary, explanation, rule.action or action, rule.actor or actor
    if c.klass is ReplyClass.TRANSIENT:
        action = info.transient_action or action
        actor = info.transient_actor or actor
    return summary, explanation, action, actor


def _code_summary(c: Classification, kb: KnowledgeBase) -> str | None:
    """The basic code's own summary when the code alone decided: no rule, no other enhanced code."""
    info = kb.basic.get(c.reply.code) if c.reply.code is not None else None
    if info is None or c.rule is not None:
        return None
    if c.reply.enhanced is not None and c.reply.enhanced != info.enhanced:
        return None
    return info.summary


#: The labelled lines, in reading order: what happened and what to do first, then the codes.
_LABELS = (
    ("Summary", "summary"),
    ("Who acts", "actor"),
    ("What to do", "action"),
    ("Explanation", "explanation"),
    ("Help", "help_url"),
    ("Reply", "reply"),
    ("Code", "code"),
    ("Enhanced", "enhanced"),
    ("Class", "class"),
    ("Reason", "reason"),
    ("Provider", "provider"),
    ("Rule", "rule"),
    ("Decided by", "decided_by"),
)

#: Who acts, in words (the reason vocabulary's value follows in brackets).
ACTOR_WORDS = {
    Actor.SENDER: "the sender",
    Actor.SENDER_ADMIN: "the sender's mail administrator",
    Actor.RECIPIENT: "the recipient",
    Actor.RECIPIENT_ADMIN: "the recipient's mail administrator",
    Actor.POSTMASTER: "the postmaster",
    Actor.NOBODY: "nobody",
}

#: ANSI styles for a terminal: bold labels, the class in a colour of its own.
_BOLD, _RESET = "\x1b[1m", "\x1b[0m"
_CLASS_STYLE = {
    ReplyClass.SUCCESS.value: "\x1b[32m",
    ReplyClass.INTERMEDIATE.value: "\x1b[36m",
    ReplyClass.TRANSIENT.value: "\x1b[33m",
    ReplyClass.PERMANENT.value: "\x1b[31m",
}


def render_explanation(explanation: Explanation, *, width: int = 100, colour: bool = False) -> str:
    """A labelled block a person can paste into a ticket, wrapped at ``width`` columns.

    The summary, who acts and what to do come first, then the reply and its codes. With
    ``colour`` the labels are bold and the class is coloured (ANSI); the words do not change.
    Control characters in the values are shown escaped (``\\x1b``), never sent raw.
    """
    data = explanation.to_dict()
    if explanation.code_title and data["code"] is not None:
        data["code"] = f"{data['code']} ({explanation.code_title})"
    if explanation.enhanced_title and data["enhanced"]:
        data["enhanced"] = f"{data['enhanced']} ({explanation.enhanced_title})"
    data["actor"] = _actor_words(explanation.actor)
    indent = max(len(label) for label, _ in _LABELS) + 2
    out = []
    for label, key in _LABELS:
        value = data.get(key)
        if value is None or value == "":
            continue
        text = printable(" ".join(str(value).split()))
        block = textwrap.fill(
            text,
            width=max(width, indent + 20),
            initial_indent=" " * indent,
            subsequent_indent=" " * indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
        head = f"{label + ':':<{indent}}"
        if colour:
            head = f"{_BOLD}{label}:{_RESET}" + " " * (indent - len(label) - 1)
            if key == "class" and text in _CLASS_STYLE:
                block = block.replace(text, f"{_CLASS_STYLE[text]}{text}{_RESET}", 1)
        out.append(head + block[indent:])
    return "\n".join(out)


def _actor_words(actor: Actor) -> str:
    words = ACTOR_WORDS[actor]
    return words if actor.value.replace("_", " ") in words else f"{words} ({actor.value})"
