"""Bounces laid out like the best non-delivery reports: Postfix bounce(5) files and DSN texts.

Theory of operation. What Postfix lets us shape in a non-delivery report (NDR), in order:

1. the template (``bounce_template_file``): static prose at the top of the text part, with
   main.cf ``$parameters`` and nothing per message or recipient. Ours is short: what happened
   to the message as a whole, whom to ask for help, and what is attached;
2. one entry per recipient, which Postfix writes itself (``<rcpt>: text``) after the template;
   the text is what the delivery status filter (the maps server's ``dsn`` map) returns. Ours is
   laid out like Exchange Online's NDR: what happened and who can fix it, what you can do, a
   help link (the one the reply carries, when it has one), then details for administrators:
   the time of the failure (the filter runs at the final attempt) and the remote server's
   reply word for word, enhanced code included (:func:`smtp_policy.core.rewrite.dsn_text`);
3. the ``message/delivery-status`` part (Status, Action, Remote-MTA, Diagnostic-Code,
   Arrival-Date) and the returned message, both written by Postfix and not touched here.

Nothing can follow Postfix's own entries inside the text part, so the administrators' section is
the end of each entry. The wording comes in several languages (:class:`BounceWords`, loaded by
:mod:`smtp_policy.data.i18n`); the admin chooses one and may override any template's wording in
``[bounce]`` (:class:`BounceConfig`). Everything here is pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.header import Header
from typing import Any

from smtp_policy.core.errors import ConfigError
from smtp_policy.core.model import Actor, Explanation, Reason
from smtp_policy.core.texts import (
    ASCII_GERMAN,
    RULE_KEYS,
    ReasonWords,
    RuleWords,
    TextsConfig,
    render_help_url,
    translated_words,
)

TEMPLATES = ("failure", "delay", "success", "verify")
#: The keys of one template: its headers and its body.
TEMPLATE_KEYS = ("from", "subject", "postmaster_subject", "charset", "body")
#: What a template body may use besides main.cf ``$parameters``.
BODY_PLACEHOLDERS = frozenset({"contact", "help_url"})
_HEADERS = (
    ("Charset", "charset"),
    ("From", "from"),
    ("Subject", "subject"),
    ("Postmaster-Subject", "postmaster_subject"),
)
#: ``{name}``, not Postfix's own ``${name}``.
_PLACEHOLDER = re.compile(r"(?<!\$)\{([^{}\s]*)\}")
_URL = re.compile(r"https?://[^\s<>()\"']+", re.IGNORECASE)
#: German letters written the way German does in plain ASCII (the DSN text must be ASCII).


@dataclass(frozen=True, slots=True)
class BounceConfig:
    """``[bounce]``: the language, whom to ask for help, and wording overrides.

    ``contact`` is a mail address ("" names "your mail administrator" instead); ``help_url``
    the site's own help page ("" for none); ``templates`` maps a template name to the keys
    (``TEMPLATE_KEYS``) whose wording replaces the language's.
    """

    language: str = "en"
    contact: str = ""
    help_url: str = ""
    templates: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BounceWords:
    """Everything a bounce says, in one language.

    ``reasons`` and ``rules`` (by rule id) are empty for English: English entries use the
    knowledge's own words, which may be a rule's more precise ones.
    """

    language: str
    templates: Mapping[str, Mapping[str, str]]
    who: Mapping[Actor, str]
    mail_administrator: str
    what_to_do: str
    more_information: str
    for_administrators: str
    reasons: Mapping[Reason, ReasonWords] = field(default_factory=dict)
    rules: Mapping[str, RuleWords] = field(default_factory=dict)


def words_from_table(
    language: str,
    table: Mapping[str, Any],
    rules: Mapping[str, frozenset[str]] | None = None,
) -> BounceWords:
    """A language's words from its TOML table; ConfigError names every missing piece.

    ``rules`` maps every knowledge rule's id to the keys of ``RULE_KEYS`` it has its own
    English words for: a language other than English must translate exactly those (None
    checks only the shape of the ``[rule]`` tables).
    """
    problems: list[str] = []

    def text(where: Mapping[str, Any], key: str, path: str) -> str:
        value = where.get(key)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{language}: {path}{key}: missing text")
            return ""
        return value

    words = _table(table.get("words"))
    who_table = _table(table.get("who"))
    who = {actor: text(who_table, actor.value, "who.") for actor in Actor}
    templates = {}
    for name in TEMPLATES:
        spec = _table(table.get(name))
        templates[name] = {k: str(v) for k, v in spec.items() if k in TEMPLATE_KEYS}
        for key in ("from", "subject", "body"):
            text(spec, key, f"{name}.")
    reasons: dict[Reason, ReasonWords] = {}
    reason_tables = _table(table.get("reason"))
    if language != "en":
        for reason in Reason:
            entry = _table(reason_tables.get(reason.value))
            path = f"reason.{reason.value}."
            transient = entry.get("transient_action")
            reasons[reason] = ReasonWords(
                text(entry, "summary", path),
                text(entry, "action", path),
                str(transient) if transient else None,
            )
    problems += [
        f"{language}: reason.{name}: not a reason"
        for name in reason_tables
        if name not in {r.value for r in Reason}
    ]
    rule_words = _rule_words(language, _table(table.get("rule")), rules, problems)
    if problems:
        raise ConfigError(problems)
    return BounceWords(
        language,
        templates,
        who,
        text(words, "mail_administrator", "words."),
        text(words, "what_to_do", "words."),
        text(words, "more_information", "words."),
        text(words, "for_administrators", "words."),
        reasons,
        rule_words,
    )


def _rule_words(
    language: str,
    tables: Mapping[str, Any],
    rules: Mapping[str, frozenset[str]] | None,
    problems: list[str],
) -> dict[str, RuleWords]:
    """``[rule."<id>"]`` tables: a translation of each rule's own words, and nothing else."""
    if language == "en":
        problems += [f"en: rule.{r}: English uses the rule's own words" for r in tables]
        return {}
    wanted = {} if rules is None else {rule: keys for rule, keys in rules.items() if keys}
    found: dict[str, RuleWords] = {}
    for rule_id in sorted(set(tables) | set(wanted)):
        path = f"{language}: rule.{rule_id}"
        entry = tables.get(rule_id, {})
        if rules is not None and rule_id not in rules:
            problems.append(f"{path}: not a rule")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{path}: expected a table of {', '.join(RULE_KEYS)}")
            continue
        own = frozenset(RULE_KEYS) if rules is None else rules[rule_id]
        for key in entry:
            if key not in RULE_KEYS:
                problems.append(f"{path}.{key}: unknown key (use {', '.join(RULE_KEYS)})")
            elif key not in own:
                problems.append(f"{path}.{key}: the rule has no {key} of its own")
        values: dict[str, str] = {}
        for key in RULE_KEYS:
            value = entry.get(key)
            if key in own and isinstance(value, str) and value.strip():
                values[key] = value
            elif key in wanted.get(rule_id, ()):
                problems.append(f"{path}.{key}: missing text")
        found[rule_id] = RuleWords(values.get("summary"), values.get("action"))
    return found


def _table(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


# --- the template file -----------------------------------------------------------------------


def bounce_file(config: BounceConfig, words: BounceWords) -> str:
    """The bounce(5) file for ``config`` in its language; ConfigError lists every problem."""
    values = {"contact": config.contact or words.mail_administrator, "help_url": config.help_url}
    problems = [
        f"bounce.{name}: unknown template (use {', '.join(TEMPLATES)})"
        for name in config.templates
        if name not in TEMPLATES
    ]
    texts: dict[str, dict[str, str]] = {}
    for name in TEMPLATES:
        spec = {**words.templates.get(name, {}), **config.templates.get(name, {})}
        try:
            spec["body"] = fill_body(spec.get("body", ""), values)
        except ConfigError as exc:
            problems += [f"bounce.{name}.body: {p}" for p in exc.problems]
        texts[name] = spec
    if problems:
        raise ConfigError(problems)
    return render_bounce_templates(texts)


def fill_body(body: str, values: Mapping[str, str]) -> str:
    """``{contact}`` and ``{help_url}`` filled in (``$`` doubled for Postfix).

    A line whose placeholders are all empty is left out; ConfigError for any other
    ``{name}`` (Postfix's own ``${name}`` is left alone).
    """
    unknown = sorted({m[1] for m in _PLACEHOLDER.finditer(body)} - BODY_PLACEHOLDERS)
    if unknown:
        usable = " ".join(f"{{{p}}}" for p in sorted(BODY_PLACEHOLDERS))
        raise ConfigError([f"unknown placeholder {{{n}}} (use {usable})" for n in unknown])
    lines = []
    for line in body.split("\n"):
        names = [m[1] for m in _PLACEHOLDER.finditer(line)]
        if names and not any(values.get(n) for n in names):
            continue
        lines.append(
            _PLACEHOLDER.sub(
                lambda m: " ".join(values.get(m[1], "").split()).replace("$", "$$"), line
            )
        )
    return "\n".join(lines)


def render_bounce_templates(texts: Mapping[str, Mapping[str, Any]]) -> str:
    """A bounce(5) file with one ``<name>_template = <<EOF … EOF`` block per template.

    Raises ConfigError with every problem: unknown templates, multi-line headers or headers
    with ``$``, a body line that would end the here-document early. A header with non-ASCII
    letters is written as an RFC 2047 encoded word (headers must be ASCII).
    """
    problems = [
        f"bounce.{name}: unknown template (use {', '.join(TEMPLATES)})"
        for name in texts
        if name not in TEMPLATES
    ]
    blocks = []
    for name in TEMPLATES:
        if name in texts:
            block, errors = _block(name, texts[name])
            blocks.append(block)
            problems += errors
    if problems:
        raise ConfigError(problems)
    return "\n".join(blocks)


def _block(name: str, spec: Mapping[str, Any]) -> tuple[str, list[str]]:
    problems = []
    body = str(spec.get("body", "")).strip("\n")
    charset = str(spec.get("charset", "us-ascii" if body.isascii() else "utf-8"))
    values = {**spec, "charset": charset}
    lines = []
    for header, key in _HEADERS:
        if key not in values:
            continue
        value = str(values[key])
        if "\n" in value or "\r" in value or "$" in value or not value.isprintable():
            problems.append(f"bounce.{name}.{key}: headers are one line without $")
            continue
        if not value.isascii():
            value = Header(value, "utf-8", maxlinelen=10_000).encode()
        lines.append(f"{header}: {value}")
    body_lines = body.splitlines()
    if any(line.strip() == "EOF" for line in body_lines):
        problems.append(f"bounce.{name}.body: a line 'EOF' would end the template early")
    text = "\n".join([f"{name}_template = <<EOF", *lines, "", *body_lines, "EOF", ""])
    return text, problems


# --- the per-recipient entry (the DSN filter's text) -----------------------------------------


def recipient_lines(
    explanation: Explanation, texts: TextsConfig, words: BounceWords, at: datetime
) -> list[str]:
    """What happened and who can fix it; what you can do; a help link; the administrators'
    label with the time ``at`` (timezone-aware), after which
    :func:`smtp_policy.core.rewrite.dsn_text` puts the reply verbatim."""
    summary, action = translated_words(explanation, words.reasons, words.rules)
    lines = [
        f"{summary.rstrip('.')}. {words.who[explanation.actor]}",
        f"{words.what_to_do} {action}",
    ]
    link = help_link(explanation, texts)
    if link:
        lines.append(f"{words.more_information} <{link}>.")  # brackets: RFC 3986 app. C
    when = at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    lines.append(words.for_administrators.replace("{time}", when))
    return [line.translate(ASCII_GERMAN) for line in lines]


def help_link(explanation: Explanation, texts: TextsConfig) -> str:
    """The link the reply itself carries, else the provider's page, else ``[texts] help_url``."""
    c = explanation.classification
    found = _URL.search(c.reply.text or c.reply.raw)
    if found:
        return found[0].rstrip(".,;:")
    if c.help_url:
        return c.help_url
    reply = c.reply
    return render_help_url(
        texts.help_url,
        {
            "code": str(reply.code) if reply.code is not None else "",
            "enhanced": str(reply.enhanced) if reply.enhanced is not None else "",
            "reason": c.reason.value if c.reason is not None else "",
        },
    )
