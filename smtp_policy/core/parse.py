"""Turn any text an operator meets into a :class:`Reply`.

Theory of operation: a reply reaches us in many wrappings. We peel the wrapping first (a
Postfix log's "host … said: … (in reply to … command)", Sendmail's ``reply=``/``stat=``,
Exim's "SMTP error from remote mail server after …", a DSN's ``Diagnostic-Code``), then read
the reply itself: the three-digit code, the RFC 3463 enhanced code and the text, across
``550-…``/``550 …`` continuation lines, whether they come as lines or, as Postfix logs them,
joined by spaces. What is left without any code is an MTA's own text ("Connection timed out").

Parsing never raises on text: anything yields a Reply, possibly with no code at all. The input
is bounded first, so a megabyte of garbage costs a bounded amount of work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from smtp_policy.core.model import EnhancedCode, Reply, ReplyForm

#: Work on at most this much of the input; the rest cannot change what the reply means.
MAX_PARSE_CHARS = 16_384
#: At most this many reply lines are read (RFC 5321 replies are short; libmilter allows 32).
MAX_PARSE_LINES = 64


@dataclass(frozen=True, slots=True)
class CodeBook:
    """What the parser must know about three-digit codes to read shorthands.

    ``standard`` holds the codes an RFC defines; ``shorthands`` maps the non-standard codes
    people write for an enhanced code ("511" for 5.1.1) to that code.
    """

    standard: frozenset[int] = frozenset()
    shorthands: Mapping[int, EnhancedCode] = field(default_factory=dict)


EMPTY_CODEBOOK = CodeBook()

_ENH = r"[245]\.\d{1,3}\.\d{1,3}"
_LINE = re.compile(
    r"^[ \t]*(?P<code>[1-5]\d\d)(?P<sep>[ -]|$)"
    r"(?:[ \t]*(?P<enh>(?P<k>[245])\.(?P<s>\d{1,3})\.(?P<d>\d{1,3}))(?![\d.]))?"
)
_ENHANCED_ANYWHERE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_CODE_AND_ENHANCED = re.compile(rf"(?<![\w.])([1-5]\d\d)[ -]({_ENH})(?![\d.])")
_POSTFIX_SAID = re.compile(
    r"host (?P<remote>\S+) (?:said|refused to talk to me): (?P<reply>.*?)"
    r"(?: \(in reply to (?P<cmd>[A-Za-z ]+?) command\))?\)?$",
    re.DOTALL,
)
_SENDMAIL = re.compile(
    r"(?:^|[ ,])(?P<key>reply|reject|stat)=(?P<value>.*?)(?=, [a-z_]+=|$)", re.DOTALL
)
_CLIENT_REPORT = re.compile(
    r"SMTP error from remote (?:mail server|server|MTA) after (?P<cmd>.+?):\s*"
    r"(?:host (?P<remote>\S+(?: \[[^\]]*\])?):\s*)?(?P<reply>[1-5]\d\d\b.*)",
    re.DOTALL | re.IGNORECASE,
)
_DIAGNOSTIC = re.compile(
    r"(?:diagnostic-code:\s*[\w-]+|^\s*(?:smtp|x-[\w-]+));\s*(?P<reply>.*)",
    re.DOTALL | re.IGNORECASE,
)
#: A reply code where a reply starts inside free text: "Remote host said: 550 …",
#: "The reason given for the delay: 450 …", "552: Message rejected …". A colon right after
#: an address ("[192.0.2.1]:465:", "192.0.2.1:25") starts a port, not a reply, unless a space
#: follows it ("host mx.example [192.0.2.1]: 550 …").
_CODE_IN_TEXT = re.compile(
    r"(?:^|(?<![\]\d])[:;]|(?<=[\]\d])[:;](?=[ \t])|\bsaid)[ \t]*(?P<code>[2-5]\d\d)(?=[ \t:-]|$)",
    re.IGNORECASE,
)
_SHORTHAND = re.compile(
    r"\b(?:smtp|reply|status|error)[ -]?(?:error|code|status)?[ :#]*"
    r"(?P<num>[1-5]\d\d|[1-5]\.\d\.\d)(?![\d.])",
    re.IGNORECASE,
)
_LEADING_ENHANCED = re.compile(rf"{_ENH}(?![\d.])[ \t:-]*")
_BARE = re.compile(r"^(?:[1-5]\d\d|[245]\.\d{1,3}\.\d{1,3})$")
_LOCAL_PREFIXES = (
    "connect to ",
    "lost connection with ",
    "conversation with ",
    "host or domain name not found",
    "name service error",
    "delivery temporarily suspended",
    "mail for ",
    "unknown user",
    "cannot update mailbox",
    "connection timed out",
    "connection refused",
    "deferred: ",
)


def parse_reply(text: str, codes: CodeBook = EMPTY_CODEBOOK) -> Reply:
    """Parse one reply, in any of the forms described in the module docstring."""
    raw = text
    body = _bound(text)
    stripped = body.strip()
    if not stripped:
        return Reply(raw=raw, code=None, enhanced=None, text="", form=ReplyForm.TEXT, lines=0)
    if _BARE.match(stripped):
        return _parse_bare(raw, stripped, codes)
    for unwrap in (_unwrap_postfix, _unwrap_client_report, _unwrap_sendmail, _unwrap_diagnostic):
        found = unwrap(raw, body, codes)
        if found is not None:
            return found
    if _LINE.match(stripped):
        return _parse_lines(raw, stripped, ReplyForm.SMTP, codes)
    return _parse_free_text(raw, stripped, codes)


def reply_from_parts(
    raw: str,
    code: int,
    body: str,
    *,
    form: ReplyForm = ReplyForm.SMTP,
    command: str | None = None,
    remote: str | None = None,
    codes: CodeBook = EMPTY_CODEBOOK,
) -> Reply | None:
    """The reply ``body`` (one line, ``code`` first), already cut out of its wrapping by a log
    parser that also read ``command`` and ``remote``; read as :func:`parse_reply` reads it.

    ``form`` is SMTP for a whole text, or the form of the wrapping ``body`` came out of (as
    Postfix's "host ... said: ..."). None when ``body`` is not that: another code first,
    several lines, or (a whole text) a bare code or a wrapping :func:`parse_reply` would peel;
    the caller then parses the whole text.
    """
    if len(body) > MAX_PARSE_CHARS or "\n" in body or "\r" in body or "\x00" in body:
        return None
    if form is ReplyForm.SMTP and (_wrapped(body) or _BARE.match(body.strip())):
        return None
    first = _LINE.match(body)
    if first is None or int(first["code"]) != code:
        return None
    enhanced = None
    if first["enh"]:
        enhanced = EnhancedCode(int(first["k"]), int(first["s"]), int(first["d"]))
    text = _strip_joined_prefixes(body[first.end() :].strip(), code, enhanced)
    if enhanced is None:
        enhanced = _find_enhanced(text, code) or codes.shorthands.get(code)
    return Reply(raw, code, enhanced, text, form, command=command, remote=remote)


def _wrapped(body: str) -> bool:
    """Whether :func:`parse_reply` would try to unwrap ``body`` before reading its lines."""
    if "host " in body and (" said: " in body or " refused to talk to me: " in body):
        return True
    if "rror from remote" in body or body.startswith("Deferred: "):
        return True
    if "=" in body and ("stat=" in body or "reply=" in body or "reject=" in body):
        return True
    return ";" in body and _DIAGNOSTIC.search(body) is not None


def _bound(text: str) -> str:
    if len(text) > MAX_PARSE_CHARS:
        text = text[:MAX_PARSE_CHARS]
    return text.replace("\x00", " ") if "\x00" in text else text


def _parse_bare(raw: str, stripped: str, codes: CodeBook) -> Reply:
    if "." in stripped:
        return Reply(raw, None, _enhanced(stripped), "", ReplyForm.BARE)
    code = int(stripped)
    implied = codes.shorthands.get(code)
    form = ReplyForm.SHORTHAND if implied else ReplyForm.BARE
    return Reply(raw, code, implied, "", form)


def _unwrap_postfix(raw: str, body: str, codes: CodeBook) -> Reply | None:
    idx = body.find("host ")
    if idx < 0 or (" said: " not in body and " refused to talk to me: " not in body):
        return None
    m = _POSTFIX_SAID.search(body.strip(), idx if idx < len(body.strip()) else 0)
    if m is None:
        return None
    inner = _parse_lines(raw, m["reply"], ReplyForm.POSTFIX, codes)
    command = m["cmd"] or ("CONNECT" if "refused to talk to me" in m.group(0) else None)
    return _with(inner, command=command, remote=m["remote"])


def _unwrap_client_report(raw: str, body: str, codes: CodeBook) -> Reply | None:
    if "rror from remote" not in body:
        return None
    m = _CLIENT_REPORT.search(body)
    if m is None:
        return None
    cmd = m["cmd"].strip()
    verb = " ".join(cmd.split(":", 1)[0].split()[:2]).upper() if cmd else None
    inner = _parse_lines(raw, m["reply"], ReplyForm.CLIENT_REPORT, codes)
    return _with(inner, command=verb, remote=m["remote"])


def _unwrap_sendmail(raw: str, body: str, codes: CodeBook) -> Reply | None:
    if body.startswith("Deferred: "):  # a stat= value on its own
        body = f"stat={body}"
    if "=" not in body or not ("stat=" in body or "reply=" in body or "reject=" in body):
        return None
    values = {m["key"]: m["value"].strip() for m in _SENDMAIL.finditer(body)}
    for key in ("reply", "reject"):
        if values.get(key):
            return _parse_lines(raw, values[key], ReplyForm.SENDMAIL, codes)
    stat = values.get("stat")
    if not stat:
        return None
    word, _, rest = stat.partition(": ")
    if rest and word in ("Deferred", "Service unavailable"):
        inner = _parse_lines(raw, rest, ReplyForm.SENDMAIL, codes)
        if inner.code is not None or inner.enhanced is not None:
            return inner
    reply = _parse_free_text(raw, stat, codes)
    return _with(reply, form=ReplyForm.SENDMAIL)


def _unwrap_diagnostic(raw: str, body: str, codes: CodeBook) -> Reply | None:
    """A DSN's ``Diagnostic-Code: smtp; 550 …``, or just its value ``smtp;550 …``."""
    if ";" not in body:
        return None
    m = _DIAGNOSTIC.search(body)
    if m is None:
        return None
    return _parse_lines(raw, m["reply"], ReplyForm.TEXT, codes)


def _parse_lines(raw: str, body: str, form: ReplyForm, codes: CodeBook) -> Reply:
    """Read ``550-5.1.1 a`` / ``550 5.1.1 b`` lines, or the same joined by spaces."""
    if "\n" in body or "\r" in body:
        lines = [ln for ln in body.replace("\r", "\n").split("\n") if ln.strip()][:MAX_PARSE_LINES]
    else:
        lines = [body]
    first = _LINE.match(lines[0]) if lines else None
    if first is None:
        reply = _parse_free_text(raw, body.strip(), codes)
        return _with(reply, form=form)
    code = int(first["code"])
    enhanced = None
    if first["enh"]:
        enhanced = EnhancedCode(int(first["k"]), int(first["s"]), int(first["d"]))
    if len(lines) == 1 and f" {code}" not in body:  # the common case: one plain line
        text = body[first.end() :].strip()
        if enhanced is None:
            enhanced = _find_enhanced(text, code) or codes.shorthands.get(code)
        return Reply(raw, code, enhanced, text, form)
    parts: list[str] = []
    for line in lines:
        m = _LINE.match(line)
        same_code = m is not None and int(m["code"]) == code
        parts.append((line[m.end() :] if m is not None and same_code else line).strip())
    text = _strip_joined_prefixes(" ".join(p for p in parts if p), code, enhanced)
    if enhanced is None:
        enhanced = _find_enhanced(text, code) or codes.shorthands.get(code)
    return Reply(raw, code, enhanced, text, form, lines=max(len(lines), 1))


def _strip_joined_prefixes(text: str, code: int, enhanced: EnhancedCode | None) -> str:
    """Remove the ``550-5.1.1`` prefixes Postfix leaves inside a multi-line reply it joined."""
    marker = f" {code}"
    if marker not in text:
        return text
    enh = re.escape(str(enhanced)) if enhanced else _ENH
    pattern = rf"(?:^|\s){code}[ -](?:{enh}(?![\d.])\s*)?"
    return re.sub(r"\s+", " ", re.sub(pattern, " ", text)).strip()


def _parse_free_text(raw: str, text: str, codes: CodeBook) -> Reply:
    """Text whose codes, if any, are somewhere inside it."""
    text = " ".join(text.split())
    pair = _CODE_AND_ENHANCED.search(text)
    if pair is not None:
        rest = (text[: pair.start()] + text[pair.end() :]).strip(" :;-")
        return Reply(raw, int(pair[1]), _enhanced(pair[2]), rest, ReplyForm.TEXT)
    inner = _reply_inside(text, codes)
    if inner is not None:
        return _parse_lines(raw, inner, ReplyForm.TEXT, codes)
    short = _SHORTHAND.search(text)
    if short is not None:
        code, enhanced = _read_shorthand(short["num"], codes)
        found = _find_enhanced(text[: short.start()] + " " + text[short.end() :], code)
        return Reply(raw, code, found or enhanced, text, ReplyForm.SHORTHAND)
    enhanced = _find_enhanced(text, None)
    lead = _LEADING_ENHANCED.match(text)
    if lead is not None:  # "5.7.1 text", as Postfix logs an end-of-message milter reject
        text = text[lead.end() :]
    lowered = text.lower()
    form = ReplyForm.LOCAL if lowered.startswith(_LOCAL_PREFIXES) else ReplyForm.TEXT
    return Reply(raw, None, enhanced, text, form)


def _reply_inside(text: str, codes: CodeBook) -> str | None:
    """The reply that starts after a colon or "said" inside free text, if its code is known."""
    for m in _CODE_IN_TEXT.finditer(text):
        code = int(m["code"])
        if code in codes.standard or code in codes.shorthands:
            rest = text[m.start("code") :]
            return rest[:3] + " " + rest[3:].lstrip(" \t:")
    return None


def _read_shorthand(num: str, codes: CodeBook) -> tuple[int | None, EnhancedCode | None]:
    """ "SMTP error 511" means 5.1.1; "SMTP Error 4.5.1" means the basic code 451."""
    digits = int(num.replace(".", ""))
    if digits in codes.standard:
        return digits, None
    if digits in codes.shorthands:
        return digits, codes.shorthands[digits]
    if "." in num:
        return None, _enhanced(num)
    return digits, None


def _find_enhanced(text: str, code: int | None) -> EnhancedCode | None:
    """The first enhanced code in the text (``(#5.1.1)``, ``[5.7.1]``), of the code's class."""
    for m in _ENHANCED_ANYWHERE.finditer(text):
        if code is None or int(m[1]) == code // 100:
            return _enhanced(m[0])
    return None


def _enhanced(text: str) -> EnhancedCode | None:
    try:
        return EnhancedCode.parse(text)
    except ValueError:
        return None


def _with(reply: Reply, **changes: object) -> Reply:
    from dataclasses import replace

    return replace(reply, **changes)  # type: ignore[arg-type]
