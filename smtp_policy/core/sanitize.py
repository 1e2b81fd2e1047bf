"""The one place where text becomes safe to put into an SMTP reply.

Every adapter that sends text to a client or an MTA (milter replies, reject footers, DSN
texts, proxy replies) passes it through here; nothing else builds reply lines. The rules:

* no CR, LF or NUL, no other control characters, printable US-ASCII only (RFC 5321 §4.2);
* each line, with its ``550-5.7.1 `` prefix and CRLF, fits in 512 octets (RFC 5321 §4.5.3.1.5);
* at most 32 lines (libmilter's ``smfi_setmlreply`` limit);
* the enhanced code's class is the basic code's class (RFC 3463 §2; Postfix refuses others);
* outlet-specific escapes are applied last: ``%`` doubled for libmilter (Postfix collapses
  ``%%`` back), ``$`` doubled for Postfix's footer templates.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

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
