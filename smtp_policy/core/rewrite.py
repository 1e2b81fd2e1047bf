"""Friendlier texts for what people read: reject footers and DSN (bounce) texts.

Pure functions over an Explanation and the admin's already-rendered lines; the text always
passes the sanitizer, and the reply's code and class are never changed here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from smtp_policy.core.bounce import BounceWords, recipient_lines
from smtp_policy.core.explain import explain_text
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import Explanation, ReplyClass
from smtp_policy.core.sanitize import clean_text, footer_text
from smtp_policy.core.texts import (
    DEFAULT_TEMPLATE,
    Audience,
    TextsConfig,
    select_template,
    worded_reply_text,
)

#: postconf(5) asks to keep footers short: they may be cut before reaching a DSN.
MAX_FOOTER_CHARS = 400
#: A DSN's human-readable text: long enough for a sentence or two and the remote's reply.
MAX_DSN_CHARS = 2000

FAILURES = (ReplyClass.TRANSIENT, ReplyClass.PERMANENT)


def default_lines(explanation: Explanation) -> list[str]:
    """Our own wording when the admin configured none: summary, what to do, help link."""
    c = explanation.classification
    lines = [f"{explanation.summary.rstrip('.')}. {explanation.action}"]
    if c.help_url:
        lines.append(f"More information: {c.help_url}")
    return lines


def footer(
    explanation: Explanation, lines: Sequence[str], *, same_line: bool = False
) -> str | None:
    """A ``smtpd_reject_footer_maps`` result, or None for replies that are not failures.

    Lines are joined with Postfix's ``\\n`` (each new line gets the reply's code); with
    ``same_line`` the footer starts with ``\\c`` and continues the reply's last line.
    """
    if explanation.classification.klass not in FAILURES:
        return None
    parts = [footer_text(line) for line in lines]
    parts = [p for p in parts if p]
    if not parts:
        return None
    return ("\\c " if same_line else "") + fit_footer(parts, MAX_FOOTER_CHARS)


#: A line is shortened to no less than this: below it, the joined text is cut instead.
_MIN_SHORTENED = 80


def fit_footer(parts: Sequence[str], limit: int) -> str:
    """``parts`` (escaped footer lines) joined with ``\\n`` in at most ``limit`` characters.

    When they are too long, the longest line is shortened (at a word, marked ``...``) so that
    the others, a help link most often, stay whole; only when that cannot be done is the joined
    text cut. A cut never leaves half of a ``$$`` or of a ``\\n``.
    """
    text = "\\n".join(parts)
    if len(text) <= limit:
        return text
    longest = max(range(len(parts)), key=lambda i: len(parts[i]))
    room = limit - (len(text) - len(parts[longest]))
    if room >= _MIN_SHORTENED:
        shortened = [*parts]
        shortened[longest] = _shorten(parts[longest], room)
        return "\\n".join(shortened)
    return _shorten(text, limit)


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at a word where one is near, ending in ``...``."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    space = cut.rfind(" ")
    if space >= len(cut) * 3 // 4:
        cut = cut[:space]
    while True:  # each step can uncover what another removes: until none applies
        before = cut
        cut = cut.rstrip(" ,;:(-")
        if cut.endswith("\\"):  # half of an escape (Postfix's \\n): drop it
            cut = cut.rstrip("\\")
        if (len(cut) - len(cut.rstrip("$"))) % 2:  # half of a $$
            cut = cut[:-1]
        if cut == before:
            return cut + "..."


def dsn_text(status: str, original: str, lines: Sequence[str]) -> str | None:
    """A ``*_delivery_status_filter`` result: same status, friendlier text, original kept.

    Returns None for successes (2.x.x), which are left as they are.
    """
    if status[:1] not in ("4", "5"):
        return None
    friendly = " ".join(clean_text(line) for line in lines if clean_text(line))
    if not friendly:
        return None
    text = f"{friendly} ({clean_text(original)})"
    if len(text) > MAX_DSN_CHARS:
        text = text[: MAX_DSN_CHARS - 4].rstrip() + "...)"
    return f"{status} {text}"


#: Who reads each map's text: a footer goes to the connecting client, a DSN to our own sender.
MAP_AUDIENCE: Final[Mapping[str, Audience]] = {"footer": "external", "dsn": "internal"}


@dataclass(frozen=True, slots=True)
class MapAnswer:
    """What the ``footer`` or ``dsn`` map answers for one key, and what chose it.

    ``text`` is the map's result (None: not found); ``entry`` the ``[texts]`` key that worded
    it (``rules.NAME`` for a reply our own rule made); ``audience`` whose text that was.
    """

    map_name: str
    explanation: Explanation
    text: str | None
    entry: str
    audience: Audience
    rule: str | None = None  #: the admin's rule whose own reply this is (no footer)
    skipped: str | None = None  #: why a dsn text was not rewritten ("deferral")


def answer_lookup(
    map_name: str,
    key: str,
    kb: KnowledgeBase,
    texts: TextsConfig,
    *,
    same_line: bool = False,
    context: Mapping[str, str] | None = None,
    audience: Audience | None = None,
    dsn_deferrals: bool = True,
    own_rule: Callable[[str], tuple[str, Explanation] | None] | None = None,
    bounce: tuple[BounceWords, datetime] | None = None,
) -> MapAnswer | None:
    """The one path from a socketmap key to its answer (the maps server and ``preview``).

    ``footer`` keys are a whole reply; ``dsn`` keys are ``X.Y.Z text``. Postfix sends no
    session facts, so the maps server leaves ``context`` empty and ``audience`` to
    :data:`MAP_AUDIENCE`. ``own_rule`` names the admin rule whose reply a footer key is (it
    gets no footer); a deferral's dsn text is left alone unless ``dsn_deferrals``; ``bounce``
    (the ``[bounce]`` words and the time of the final attempt) lays a dsn text out as a bounce
    entry where the admin's ``[texts]`` give no wording. None for a map other than ``footer``
    and ``dsn``.
    """
    if map_name not in MAP_AUDIENCE:
        return None
    reader = audience or MAP_AUDIENCE[map_name]
    if map_name == "footer" and own_rule is not None and (own := own_rule(key)) is not None:
        rule, explanation = own  # our rule's reply says it all: no second story
        return MapAnswer(map_name, explanation, None, f"rules.{rule}", reader, rule=rule)
    status, original = "", key
    if map_name == "dsn":
        status, _, original = key.partition(" ")
    explanation = explain_text(original, kb)
    if map_name == "dsn" and status.startswith("4") and not dsn_deferrals:
        return MapAnswer(map_name, explanation, None, "", reader, skipped="deferral")
    entry, lines = worded_reply_text(texts, explanation, context or {}, reader)
    default = select_template(texts, explanation, reader) == DEFAULT_TEMPLATE
    if map_name == "dsn" and bounce is not None and default:
        words, at = bounce  # no wording of the admin's: the [bounce] layout, in its language
        entry, lines = "bounce", recipient_lines(explanation, texts, words, at)
    if map_name == "footer":
        text = footer(explanation, lines, same_line=same_line)
    else:
        text = dsn_text(status, original, lines) if original else None
    return MapAnswer(map_name, explanation, text, entry, reader)


#: How the reasons the SMTP and LMTP clients give start (the texts a DSN filter sees): a
#: remote's reply (``host mx[ip] said: 550 ...``), a reply code, or a connection problem.
_REASON_STARTS = re.compile(
    r"(?:host \S+ (?:said|refused to talk to me): |[245]\d\d(?:[ -]|\Z)|connect to "
    r"|lost connection with |conversation with |Host or domain name not found"
    r"|Name service error|TLS is required|Server certificate not |mail for \S+ loops back)"
)


def split_dsn_text(text: str) -> tuple[str, str] | None:
    """The friendly words and the original reason of a text :func:`dsn_text` wrote, or None.

    ``text`` is the part after the status (what Postfix logs in ``status=bounced (...)``);
    the original is the parenthesised reason at its end, kept verbatim by :func:`dsn_text`.
    A text that starts like Postfix's own reasons, or whose last group is not one, is not
    ours: None.
    """
    if not text.endswith(")") or _REASON_STARTS.match(text):
        return None
    depth = 0
    for start in range(len(text) - 1, -1, -1):
        if text[start] == ")":
            depth += 1
        elif text[start] == "(":
            depth -= 1
            if depth == 0:
                break
    else:
        return None
    friendly, original = text[:start], text[start + 1 : -1]
    if not friendly.endswith(" ") or not friendly.strip() or not _REASON_STARTS.match(original):
        return None
    return friendly.strip(), original
