"""Put a classification into words: a summary, an explanation, what to do and who acts."""

from __future__ import annotations

import textwrap

from smtp_policy.core.classify import classify
from smtp_policy.core.knowledge import KnowledgeBase, Rule
from smtp_policy.core.model import Actor, Classification, Explanation, ReplyClass
from smtp_policy.core.parse import parse_reply


def explain_text(text: str, kb: KnowledgeBase) -> Explanation:
    """Parse, classify and explain one reply in any form :func:`parse_reply` reads."""
    return explain(classify(parse_reply(text, kb.codebook), kb), kb)


def explain(classification: Classification, kb: KnowledgeBase) -> Explanation:
    """Explain a classification in plain language.

    The words of the rule that decided come first, the reason's fill in what it leaves out;
    a rule's own meaning of the enhanced code replaces the registry's.
    """
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
    return Explanation(
        classification,
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
    if c.klass is ReplyClass.SUCCESS:
        accepted = rule.summary if rule is not None and rule.summary else None
        return (
            accepted or "The server accepted the command",
            code_meaning or "The reply reports success.",
            "Nothing to do.",
            Actor.NOBODY,
        )
    if c.klass is ReplyClass.INTERMEDIATE:
        return (
            "The server waits for more input",
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
    summary, explanation = info.summary, info.explanation
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


_LABELS = (
    ("Reply", "reply"),
    ("Code", "code"),
    ("Enhanced", "enhanced"),
    ("Class", "class"),
    ("Reason", "reason"),
    ("Summary", "summary"),
    ("Explanation", "explanation"),
    ("What to do", "action"),
    ("Who acts", "actor"),
    ("Provider", "provider"),
    ("Help", "help_url"),
    ("Rule", "rule"),
)


def render_explanation(explanation: Explanation) -> str:
    """A plain, colour-free block a person can paste into a ticket."""
    data = explanation.to_dict()
    if explanation.code_title and data["code"] is not None:
        data["code"] = f"{data['code']} ({explanation.code_title})"
    if explanation.enhanced_title and data["enhanced"]:
        data["enhanced"] = f"{data['enhanced']} ({explanation.enhanced_title})"
    width = max(len(label) for label, _ in _LABELS) + 2
    out = []
    for label, key in _LABELS:
        value = data.get(key)
        if value is None or value == "":
            continue
        text = " ".join(str(value).split())
        out.append(
            textwrap.fill(
                text,
                width=100,
                initial_indent=f"{label + ':':<{width}}",
                subsequent_indent=" " * width,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)
