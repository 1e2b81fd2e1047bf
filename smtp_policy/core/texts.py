"""Reply texts: the admin's templates, chosen per reply and audience, rendered safely.

Theory of operation. ``[texts]`` holds templates in entries keyed by what they answer::

    [texts.enhanced."5.7.1"]   # an exact enhanced code; "X.7.1" matches any class
    [texts.code.554]           # a basic reply code
    [texts.reason.user_unknown]
    [texts.default]            # always present (shipped defaults)

For a reply, entries are tried from the most to the least specific: enhanced (exact, then
``X.s.d``), code, reason, default. The first entry with a text for the audience wins. Inside
an entry the text is picked in this order: ``lang.<default_language>.<audience>``,
``<audience>``, and for the ``internal`` audience then ``lang.<default_language>.external``
and ``external`` (internal people may read what the internet reads, not the other way round).

Templates use ``str.format`` syntax with a small whitelist of placeholders (``PLACEHOLDERS``);
``{{`` and ``}}`` are literal braces, a line break starts a new reply line, and a template line
whose placeholders all render empty (say ``More information: {help_url}`` with no URL) is left
out. Values are cleaned to one line each before they are put in, and every rendered line goes
through :func:`smtp_policy.core.sanitize.sanitize_reply`, wrapped so that it fits 512 octets
with any ``NNN-C.SSS.DDD`` prefix. Everything here is pure: no files, no clock.
"""

from __future__ import annotations

import difflib
import string
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from smtp_policy.core.errors import ConfigError
from smtp_policy.core.model import EnhancedCode, Explanation, Reason, ReplyClass
from smtp_policy.core.networks import IPNetwork, in_networks
from smtp_policy.core.sanitize import MAX_LINES, clean_text, sanitize_reply

Audience = Literal["internal", "external"]
AUDIENCES: tuple[Audience, ...] = ("external", "internal")

#: Every placeholder a reply template may use.
PLACEHOLDERS = frozenset(
    {
        "code",
        "enhanced",
        "reason",
        "summary",
        "explanation",
        "action",
        "help_url",
        "recipient",
        "sender",
        "client_addr",
        "client_name",
        "queue_id",
        "hostname",
        "date",
    }
)
#: Placeholders whose values the caller passes in ``context`` (the rest come from the reply).
CONTEXT_KEYS = frozenset(
    {"recipient", "sender", "client_addr", "client_name", "queue_id", "hostname", "date"}
)
#: The 220 greeting and the 221 goodbye are sent before/after any reply: session facts only.
BANNER_PLACEHOLDERS = frozenset({"hostname", "date", "client_addr", "client_name"})
#: ``[texts] help_url`` is a URL template over the reply's codes and reason.
HELP_URL_PLACEHOLDERS = frozenset({"code", "enhanced", "reason"})

#: What templates are rendered with when the configuration is checked.
SAMPLE_VALUES: Mapping[str, str] = {
    "code": "550",
    "enhanced": "5.7.1",
    "reason": "policy_violation",
    "summary": "The message was refused by the receiving site's policy",
    "explanation": "The receiving server refused the message because of a local policy.",
    "action": "Contact the recipient by other means, or ask their postmaster.",
    "help_url": "https://help.example.com/mail-errors#policy_violation",
    "recipient": "user@example.com",
    "sender": "sender@example.org",
    "client_addr": "192.0.2.1",
    "client_name": "mail.example.org",
    "queue_id": "4Bq7Xk2Lz9",
    "hostname": "mx.example.com",
    "date": "Mon, 01 Jan 2024 00:00:00 +0000",
}

#: Our wording when nothing is configured (the shipped defaults say the same).
DEFAULT_TEMPLATE = "{summary}. {action}\nMore information: {help_url}"

_FORMATTER = string.Formatter()
_LINE_SEPARATORS = {"Zl", "Zp"}


@dataclass(frozen=True, slots=True)
class TextSet:
    """One entry: a text per audience, and translations keyed by language tag."""

    external: str | None = None
    internal: str | None = None
    lang: Mapping[str, TextSet] = field(default_factory=dict)

    def pick(self, audience: Audience, language: str) -> str | None:
        """The text for ``audience`` in ``language``, or None if this entry has none."""
        choice = self.choose(audience, language)
        return None if choice is None else choice[1]

    def choose(self, audience: Audience, language: str) -> tuple[str, str] | None:
        """The key inside this entry (``lang.de.internal``, ``external``) and its text."""
        translated = self.lang.get(language)
        if translated is None and "-" in language:  # fr-CA: the fr text, where there is no fr-CA
            language = language.split("-", 1)[0]
            translated = self.lang.get(language)
        wanted: tuple[Audience, ...] = (
            ("external",) if audience == "external" else ("internal", "external")
        )
        for aud in wanted:
            for prefix, source in ((f"lang.{language}.", translated), ("", self)):
                text = getattr(source, aud) if source is not None else None
                if text is not None:
                    return prefix + aud, str(text)
        return None


#: German written in ASCII the way Germans do (ae, oe, ue, ss), before the sanitizer would
#: drop the dots (which reads as other words).
ASCII_GERMAN = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})
ASCII_GERMAN[ord("ß")] = "ss"


@dataclass(frozen=True, slots=True)
class ReasonWords:
    """One reason in one language: its summary and what to do (final, and when retried)."""

    summary: str
    action: str
    transient_action: str | None = None


#: What a rule may say in its own words in another language, in the order of :class:`RuleWords`.
RULE_KEYS = ("summary", "action")


@dataclass(frozen=True, slots=True)
class RuleWords:
    """One knowledge rule's own words in one language (None: the reason's translation)."""

    summary: str | None = None
    action: str | None = None


@dataclass(frozen=True, slots=True)
class Translation:
    """The reasons' and rules' words in one shipped language, for ``{summary}`` and ``{action}``."""

    language: str
    reasons: Mapping[Reason, ReasonWords]
    rules: Mapping[str, RuleWords] = field(default_factory=dict)


def translated_words(
    explanation: Explanation,
    reasons: Mapping[Reason, ReasonWords],
    rules: Mapping[str, RuleWords],
) -> tuple[str, str]:
    """The summary and action of ``explanation`` in another language: the deciding rule's own
    words where it has them, else its reason's (the retry advice for a 4xx), else English."""
    c = explanation.classification
    summary, action = explanation.summary, explanation.action
    translated = reasons.get(c.reason) if c.reason is not None else None
    if translated is not None:
        summary = translated.summary
        action = translated.action
        if c.klass is ReplyClass.TRANSIENT and translated.transient_action:
            action = translated.transient_action
    own = rules.get(c.rule) if c.rule is not None else None
    if own is not None:
        summary = own.summary or summary
        action = own.action or action
    return summary, action


@dataclass(frozen=True, slots=True)
class TextsConfig:
    """The ``[texts]`` section, validated.

    ``translation`` holds the words of ``default_language`` when it is a shipped language
    other than English: ``{summary}`` and ``{action}`` then speak it.
    """

    default: TextSet = TextSet(external=DEFAULT_TEMPLATE)
    default_language: str = "en"
    internal_networks: tuple[IPNetwork, ...] = ()
    help_url: str = ""
    reason: Mapping[Reason, TextSet] = field(default_factory=dict)
    enhanced: Mapping[str, TextSet] = field(default_factory=dict)
    code: Mapping[int, TextSet] = field(default_factory=dict)
    translation: Translation | None = None


def audience_of(client_addr: str, texts: TextsConfig) -> Audience:
    """``"internal"`` for a client in ``texts.internal_networks``, else ``"external"``."""
    return "internal" if in_networks(client_addr, texts.internal_networks) else "external"


#: What :func:`chosen_template` names when no entry has a text (the built-in wording).
BUILT_IN_ENTRY = "built-in default"


def select_template(
    texts: TextsConfig, explanation: Explanation, audience: Audience, language: str | None = None
) -> str:
    """The template for a reply: enhanced, then code, then reason, then default."""
    return chosen_template(texts, explanation, audience, language)[1]


def chosen_template(
    texts: TextsConfig, explanation: Explanation, audience: Audience, language: str | None = None
) -> tuple[str, str]:
    """The template for a reply and the ``[texts]`` key it came from.

    The key is spelled as in the configuration: ``texts.enhanced."5.7.1".external``,
    ``texts.reason.user_unknown.lang.de.internal``, ``texts.default.external``, or
    :data:`BUILT_IN_ENTRY`.
    """
    lang = language or texts.default_language
    for name, entry in _entries(texts, explanation):
        choice = entry.choose(audience, lang)
        if choice is not None:
            return f"texts.{name}.{choice[0]}", choice[1]
    return BUILT_IN_ENTRY, DEFAULT_TEMPLATE


def _entries(texts: TextsConfig, explanation: Explanation) -> Iterator[tuple[str, TextSet]]:
    reply = explanation.reply
    keys: list[str] = []
    if reply.enhanced is not None:
        keys = [str(reply.enhanced), reply.enhanced.key]
    for key in keys:
        if key in texts.enhanced:
            yield f'enhanced."{key}"', texts.enhanced[key]
    if reply.code is not None and reply.code in texts.code:
        yield f"code.{reply.code}", texts.code[reply.code]
    reason = explanation.classification.reason
    if reason is not None and reason in texts.reason:
        yield f"reason.{reason.value}", texts.reason[reason]
    yield "default", texts.default


def reply_values(
    texts: TextsConfig, explanation: Explanation, context: Mapping[str, str]
) -> dict[str, str]:
    """Every placeholder's value for a reply; unknown context keys are ignored."""
    c = explanation.classification
    reply = c.reply
    base = {
        "code": str(reply.code) if reply.code is not None else "",
        "enhanced": str(reply.enhanced) if reply.enhanced is not None else "",
        "reason": c.reason.value if c.reason is not None else "",
    }
    values = dict.fromkeys(PLACEHOLDERS, "")
    values.update({k: str(v) for k, v in context.items() if k in CONTEXT_KEYS})
    values.update(base)
    values["summary"] = explanation.summary
    values["explanation"] = explanation.explanation
    values["action"] = explanation.action
    if texts.translation is not None:
        t = texts.translation
        summary, action = translated_words(explanation, t.reasons, t.rules)
        if t.language == "de":
            summary, action = summary.translate(ASCII_GERMAN), action.translate(ASCII_GERMAN)
        values["summary"], values["action"] = summary, action
    values["help_url"] = c.help_url or render_help_url(texts.help_url, base)
    return values


def render_help_url(template: str, values: Mapping[str, str]) -> str:
    """``[texts] help_url`` filled in with the reply's code, enhanced code and reason."""
    if not template:
        return ""
    _check_fields(template, HELP_URL_PLACEHOLDERS)
    mapping = _StrictValues(dict.fromkeys(HELP_URL_PLACEHOLDERS, ""))
    mapping.update({k: clean_text(values.get(k, "")) for k in HELP_URL_PLACEHOLDERS})
    return clean_text(template.format_map(mapping)).replace(" ", "")


def render_reply_text(
    texts: TextsConfig,
    explanation: Explanation,
    context: Mapping[str, str],
    audience: Audience | str,
) -> list[str]:
    """The admin's text for a reply and audience, as sanitized reply lines (pure, no I/O).

    ``context`` supplies the session placeholders (``CONTEXT_KEYS``); missing ones are empty.
    Raises ConfigError only for a template that configuration checking would have refused.
    """
    return worded_reply_text(texts, explanation, context, audience)[1]


def worded_reply_text(
    texts: TextsConfig,
    explanation: Explanation,
    context: Mapping[str, str],
    audience: Audience | str,
) -> tuple[str, list[str]]:
    """:func:`render_reply_text`, with the ``[texts]`` key that worded it first."""
    aud: Audience = "internal" if audience == "internal" else "external"
    entry, template = chosen_template(texts, explanation, aud)
    return entry, render_template(template, reply_values(texts, explanation, context))


def render_rule_text(
    rule_text: str | None,
    texts: TextsConfig,
    explanation: Explanation,
    context: Mapping[str, str],
    audience: Audience | str,
) -> list[str]:
    """A policy rule's own ``text`` if it has one, else :func:`render_reply_text`."""
    if rule_text is None:
        return render_reply_text(texts, explanation, context, audience)
    return render_template(rule_text, reply_values(texts, explanation, context))


def render_template(
    template: str, values: Mapping[str, str], *, code: int = 550, max_lines: int = MAX_LINES
) -> list[str]:
    """Fill ``template`` in and sanitize it; ``code`` only picks the text for an empty result.

    Raises ConfigError for a placeholder outside ``PLACEHOLDERS`` (or a brace error).
    """
    cleaned = _StrictValues(dict.fromkeys(PLACEHOLDERS, ""))
    cleaned.update({k: clean_text(v) for k, v in values.items() if k in PLACEHOLDERS})
    lines = [line.format_map(cleaned) for line in template.split("\n") if _keep_line(line, cleaned)]
    widest = EnhancedCode(code // 100, 999, 999)  # wrap for the longest possible prefix
    return list(sanitize_reply(code, widest, lines, max_lines=max_lines).lines)


def _keep_line(line: str, values: Mapping[str, str]) -> bool:
    names = _check_fields(line, PLACEHOLDERS)
    return not names or any(values[name] for name in names)


class _StrictValues(dict[str, str]):
    """A format mapping that refuses unknown placeholders with a ConfigError."""

    def __missing__(self, key: str) -> str:
        raise ConfigError([f"unknown placeholder {{{key}}}"])


def _check_fields(line: str, allowed: frozenset[str]) -> list[str]:
    """The placeholder names in one template line; ConfigError for anything not allowed."""
    try:
        fields = [
            (name, spec, conv) for _, name, spec, conv in _FORMATTER.parse(line) if name is not None
        ]
    except ValueError as exc:
        raise ConfigError([f"unbalanced brace: {exc}"]) from None
    for name, spec, conv in fields:
        if name not in allowed or spec or conv:
            raise ConfigError([f"placeholder {{{name}}} is not allowed"])
    return [name for name, _, _ in fields]


def template_problems(
    template: str, allowed: frozenset[str] = PLACEHOLDERS, *, code: int = 550
) -> list[str]:
    """Everything wrong with a template, one message per problem; [] when it is usable.

    Checks control characters (a line break is fine), brace balance, placeholders (only
    ``allowed``, no conversions or format specs), then renders it with ``SAMPLE_VALUES``
    and checks that it says something and fits in 32 reply lines.
    """
    bad = _bad_character(template)
    if bad is not None:
        return [bad]
    problems: list[str] = []
    for number, line in enumerate(template.split("\n"), start=1):
        problems += _line_problems(line, number, allowed)
    if problems:
        return problems
    samples = _StrictValues(SAMPLE_VALUES)
    if not any(clean_text(line.format_map(samples)) for line in template.split("\n")):
        return ["renders to nothing: write some text, or leave the key out"]
    lines = render_template(template, SAMPLE_VALUES, code=code, max_lines=10_000)
    if len(lines) > MAX_LINES:
        return [f"renders to {len(lines)} reply lines; at most {MAX_LINES} are allowed"]
    return []


def _bad_character(template: str) -> str | None:
    for ch in template:
        if ch in "\n\t":
            continue
        category = unicodedata.category(ch)
        if ch == "\r":
            return "contains a carriage return (CR): use a line break for a new reply line"
        if ch == "\0":
            return "contains a NUL character"
        if category in ("Cc", "Cf", "Cs") or category in _LINE_SEPARATORS:
            return f"contains control character U+{ord(ch):04X}"
    return None


def _line_problems(line: str, number: int, allowed: frozenset[str]) -> list[str]:
    where = f" (template line {number})" if number > 1 else ""
    try:
        parsed = list(_FORMATTER.parse(line))
    except ValueError:
        return [f"unbalanced brace{where}: write {{{{ and }}}} for literal braces"]
    problems = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        if not name.strip():
            problems.append(f"empty placeholder {shown}{where}: name a value, e.g. {{summary}}")
        elif name not in allowed:
            problems.append(_unknown_placeholder(name, allowed) + where)
        elif spec or conv:
            problems.append(
                f"placeholder {shown}{where}: conversions and format specs are not allowed"
            )
    return problems


def _unknown_placeholder(name: str, allowed: frozenset[str]) -> str:
    if name in PLACEHOLDERS:
        usable = " ".join(f"{{{p}}}" for p in sorted(allowed))
        return f"placeholder {{{name}}} is not available here (use {usable})"
    close = difflib.get_close_matches(name, sorted(allowed), n=1)
    hint = f" (did you mean {{{close[0]}}}?)" if close else ""
    return f"unknown placeholder {{{name}}}{hint}"


def help_url_problems(template: str) -> list[str]:
    """What is wrong with ``[texts] help_url`` ("" means no link)."""
    if not template:
        return []
    problems = template_problems(template, HELP_URL_PLACEHOLDERS)
    if problems:
        return problems
    url = template.format_map(SAMPLE_VALUES)
    if "\n" in template or any(ch.isspace() for ch in url):
        return ["a URL cannot contain spaces or line breaks"]
    if not url.startswith(("https://", "http://", "mailto:")):
        return ["must start with https://, http:// or mailto:"]
    return []


#: The 220 greeting's placeholders in each MTA's own macro syntax.
POSTFIX_MACROS = {"hostname": "$myhostname"}
SENDMAIL_MACROS = {"hostname": "$j", "date": "$b"}


def mta_greeting(template: str, macros: dict[str, str]) -> str | None:
    """``template`` in an MTA's own macro syntax, or None if it cannot be said there."""
    if "\n" in template.strip() or "$" in template or "`" in template or "'" in template:
        return None
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        lead = " " if literal[:1].isspace() else ""
        trail = " " if literal[-1:].isspace() else ""
        out.append(lead + clean_text(literal) + trail)
        if name is not None:
            if name not in macros:
                return None
            out.append(macros[name])
    return " ".join("".join(out).split())
