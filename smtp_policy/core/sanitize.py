"""The one place where text becomes safe to put into an SMTP reply, a JSON line or a terminal.

Every adapter that sends text to a client or an MTA (milter replies, reject footers, DSN
texts, proxy replies) passes it through here; nothing else builds reply lines. The rules:

* no CR, LF or NUL, no other control characters, printable US-ASCII only (RFC 5321 §4.2);
* each line, with its ``550-5.7.1 `` prefix and CRLF, fits in 512 octets (RFC 5321 §4.5.3.1.5);
* at most 32 lines (libmilter's ``smfi_setmlreply`` limit);
* the enhanced code's class is the basic code's class (RFC 3463 §2; Postfix refuses others);
* outlet-specific escapes are applied last: ``%`` doubled for libmilter (Postfix collapses
  ``%%`` back), ``$`` doubled for Postfix's footer templates.

Text written elsewhere is escaped, never changed otherwise: :func:`json_text` for every JSON
line or document smtp_policy writes (valid UTF-8, one line per object, no raw control or line
separator), :func:`printable` for every value shown on a terminal.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from smtp_policy.core.model import EnhancedCode

MAX_LINE_OCTETS = 512  # including the reply code prefix and the CRLF
MAX_LINES = 32

_REPLACEMENTS = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
        "\t": " ",
    }
)


_CONTROLS = re.compile(r"[^ -~]")


@dataclass(frozen=True, slots=True)
class SafeReply:
    """A reply whose every line is safe to send; build it with :func:`sanitize_reply`."""

    code: int
    enhanced: EnhancedCode | None
    lines: tuple[str, ...]

    def wire(self) -> str:
        """The reply as sent on the wire, CRLF-terminated lines with continuation dashes."""
        out = []
        for i, line in enumerate(self.lines):
            sep = " " if i == len(self.lines) - 1 else "-"
            prefix = f"{self.code}{sep}{self.enhanced} " if self.enhanced else f"{self.code}{sep}"
            out.append(f"{prefix}{line}".rstrip() + "\r\n")
        return "".join(out)


def clean_text(text: str) -> str:
    """One line of printable ASCII: controls become spaces, letters lose their accents."""
    if not (text.isascii() and text.isprintable()):  # the common case needs none of this
        text = text.translate(_REPLACEMENTS)
        if not text.isascii():
            text = unicodedata.normalize("NFKD", text)
            text = "".join(ch for ch in text if not unicodedata.combining(ch))
            text = text.encode("ascii", "replace").decode("ascii")
        text = _CONTROLS.sub(" ", text)
    return " ".join(text.split())


def sanitize_reply(
    code: int,
    enhanced: EnhancedCode | None,
    text: str | Iterable[str],
    *,
    max_lines: int = MAX_LINES,
) -> SafeReply:
    """Build a safe reply; line breaks in ``text`` start new reply lines, long lines wrap.

    Raises ValueError only for a code that is not a reply code at all (an admin error that
    configuration validation reports before anything is sent).
    """
    if not 200 <= code <= 599:
        raise ValueError(f"{code} is not an SMTP reply code")
    if enhanced is not None and enhanced.klass != code // 100:
        if code // 100 not in (2, 4, 5):
            enhanced = None
        else:
            enhanced = EnhancedCode(code // 100, enhanced.subject, enhanced.detail)
    chunks = (
        text.splitlines() if isinstance(text, str) else [p for t in text for p in t.splitlines()]
    )
    prefix_len = len(f"{code}-{enhanced} ") if enhanced else 4
    width = MAX_LINE_OCTETS - 2 - prefix_len
    lines: list[str] = []
    for chunk in chunks:
        cleaned = clean_text(chunk)
        if cleaned:
            lines.extend(_wrap(cleaned, width))
    if not lines:
        lines = ["Requested action not taken" if code >= 400 else "OK"]
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1][: width - 4].rstrip() + " ..."]
    return SafeReply(code, enhanced, tuple(lines))


def _wrap(text: str, width: int) -> list[str]:
    out = []
    while len(text) > width:
        cut = text.rfind(" ", 0, width + 1)
        if cut <= 0:
            cut = width
        out.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        out.append(text)
    return out


#: libmilter refuses a reply line longer than MAXREPLYLEN (980) with its codes; keep clear of it.
MILTER_MAX_TEXT = 960


def milter_line(line: str) -> str:
    """A safe line as libmilter wants it: every ``%`` doubled (Postfix shows one).

    Doubling can push a long line of ``%`` past libmilter's limit; such a line is shortened.
    """
    doubled = line.replace("%", "%%")
    if len(doubled) > MILTER_MAX_TEXT:
        while len(line) + line.count("%") > MILTER_MAX_TEXT:
            line = line[: -max(1, (len(line) + line.count("%") - MILTER_MAX_TEXT) // 2)]
        doubled = line.replace("%", "%%")
    return doubled


def footer_text(text: str) -> str:
    """Safe footer text for ``smtpd_reject_footer_maps``: one line, ``$`` escaped as ``$$``."""
    return clean_text(text).replace("$", "$$")


#: Lone surrogates: ``\\udc80``-``\\udcff`` stand for undecodable bytes (surrogateescape).
_SURROGATE = re.compile("[\ud800-\udfff]")
#: What JSON leaves raw with ``ensure_ascii=False`` yet breaks a line-based reader or UTF-8:
#: DEL and the C1 controls (U+0085 is a line break to ``str.splitlines``), U+2028, U+2029 and
#: lone surrogates. JSON itself escapes the C0 controls.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: What a terminal must not receive raw: C0 and C1 controls (ESC starts a sequence that
#: repaints it), line and paragraph separators, bidirectional overrides, lone surrogates.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _byte_or_replacement(char: str) -> str:
    """A lone surrogate as text: an escaped byte as ``\\xNN``, any other as U+FFFD."""
    point = ord(char)
    return f"\\x{point - 0xDC00:02x}" if 0xDC80 <= point <= 0xDCFF else "\ufffd"


def without_surrogates(text: str) -> str:
    """``text`` encodable as UTF-8: a byte that surrogateescape kept (``\\udcff``) becomes the
    four characters ``\\xff``, any other lone surrogate U+FFFD."""
    if text.isascii():
        return text
    return _SURROGATE.sub(lambda m: _byte_or_replacement(m.group()), text)


def _json_escape(match: re.Match[str]) -> str:
    char = match.group()
    if "\ud800" <= char <= "\udfff":
        return json.dumps(_byte_or_replacement(char), ensure_ascii=False)[1:-1]
    return f"\\u{ord(char):04x}"


def json_text(
    value: object, *, indent: int | None = None, default: Callable[[Any], Any] | None = None
) -> str:
    """``value`` as JSON that is valid UTF-8 and that ``str.splitlines`` does not split (without
    ``indent``): non-ASCII text stays readable, DEL, C1 controls, U+2028 and U+2029 are written
    as ``\\uXXXX`` escapes, lone surrogates as :func:`without_surrogates` spells them.
    ``default`` is :func:`json.dumps`'s."""
    return json_safe(json.dumps(value, ensure_ascii=False, indent=indent, default=default))


def json_safe(text: str) -> str:
    """JSON that ``json.dumps(..., ensure_ascii=False)`` wrote, escaped as :func:`json_text`
    escapes it (for JSON put together from pieces that encoder wrote)."""
    if text.isascii() and "\x7f" not in text:
        return text
    return _JSON_UNSAFE.sub(_json_escape, text)


def _terminal_escape(match: re.Match[str]) -> str:
    char = match.group()
    point = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= point <= 0xDCFF:
        return f"\\x{point - 0xDC00:02x}"
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def printable(text: str) -> str:
    """``text`` safe to show on a terminal: controls (ESC, CR, LF, tab, C1), U+2028/U+2029,
    bidirectional overrides and lone surrogates are shown as escapes (``\\x1b``, ``\\n``,
    ``\\u2028``, ``\\xff``); everything else is left as it is."""
    if text.isascii() and text.isprintable():
        return text
    return _UNPRINTABLE.sub(_terminal_escape, text)
