"""One Postfix 3.x or Sendmail 8.x mail log line in, one :class:`LogRecord` out.

Theory of operation
-------------------
A mail log line is ``<timestamp> [<facility.level>] <host> <tag>[<pid>]: [<queue id>: ]<body>``.
``PREFIX`` matches all of that once, for the three timestamp forms (classic syslog
``Dec  4 04:30:09``, Postfix's ``maillog_file`` ``Nov 28 12:19:08`` and RFC 3339
``2024-04-25T22:25:16.352700+02:00``) and any Postfix ``syslog_name`` (``postfix/submission/smtpd``,
``postfix-out/smtp``) or Sendmail tag (``sendmail``, ``sm-mta``, ``sm-msp-queue``...). The program
is the tag's last path component. It picks a short, ordered tuple of *shapes* (``_BY_PROGRAM``,
``_SENDMAIL``): each shape is one small named regex anchored at the body, a builder that turns its
match into a record, and a real sample line. The first shape that matches wins; no shape matching
gives kind ``"unknown"`` (so callers can count what we do not understand), and a line that is not
from Postfix or Sendmail at all gives ``None``. No two shapes overlap: the tests check that every
sample (and every golden line) matches one shape and no other, as fail2ban's sample tests do.

Replies that Postfix logs before ``; from=<...> to=<...> proto=... helo=<...>`` may themselves
contain ``;``. ``_TAIL`` finds the leftmost ``; `` after which only those keys follow up to the end
of the line, so the reply is everything before it. Patterns use possessive or bounded groups, and
Sendmail's free-text ``key=value`` runs are split with string scans, so no line can make a match
backtrack for long (tests feed pathological lines).

Speed: one prefix match, one or two body matches, no dicts or intermediate objects beyond the
record (Sendmail lines excepted). A frozen dataclass spends most of its construction time in
``object.__setattr__`` (33 fields, ~6x a plain slotted class), so records are built by ``_new``:
a non-frozen twin with the same slots whose ``__post_init__`` switches the instance's class to
:class:`LogRecord`. Nothing here reads a file, the
clock or the environment, and nothing here logs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from datetime import datetime, tzinfo
from typing import Any, Final, Literal, TypeAlias

__all__ = ["KINDS", "PREFIX", "SHAPES", "LogRecord", "parse_line"]

Direction: TypeAlias = Literal["upstream", "downstream"]
Mta: TypeAlias = Literal["postfix", "sendmail"]

#: Every value of :attr:`LogRecord.kind`.
KINDS: Final = (
    "smtpd_reject",
    "postscreen_reject",
    "milter_reject",
    "delivery",
    "attempt",
    "connection_error",
    "expired",
    "bounce_notice",
    "message_id",
    "queued",
    "client",
    "removed",
    "connect",
    "disconnect",
    "lost_connection",
    "timeout",
    "warning",
    "sendmail_delivery",
    "sendmail_ruleset_reject",
    "sendmail_milter_reject",
    "sendmail_reject",
    "sendmail_from",
    "noise",
    "unknown",
)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """What one mail log line says. Fields the line does not carry are ``None``.

    ``timestamp`` is the raw text. RFC 3339 stamps are also parsed (``parsed_time``, aware);
    classic syslog stamps carry no year, so only ``month``/``day``/``clock`` are set and
    :meth:`at` combines them with a year the caller knows. ``direction`` is ``"upstream"`` for a
    reply our MTA gave a client and ``"downstream"`` for a reply a remote server gave us (or a
    local delivery result). ``code`` and ``enhanced`` are the reply's 3-digit and enhanced codes;
    for deliveries ``enhanced`` is the ``dsn=`` value. ``extra`` holds whatever else the line
    names (``conn_use``, ``sasl_username``, ``size``, ``nrcpt``, disconnect counts...).
    """

    kind: str
    mta: Mta
    program: str
    service_name: str
    pid: int | None = None
    host: str | None = None
    timestamp: str | None = None
    parsed_time: datetime | None = None
    month: int | None = None
    day: int | None = None
    clock: str | None = None
    queue_id: str | None = None
    direction: Direction | None = None
    stage: str | None = None
    action: str | None = None
    code: int | None = None
    enhanced: str | None = None
    reply: str | None = None
    status: str | None = None
    sender: str | None = None
    recipient: str | None = None
    orig_recipient: str | None = None
    client_name: str | None = None
    client_addr: str | None = None
    relay: str | None = None
    delay: float | None = None
    delays: tuple[float, ...] | None = None
    dsn: str | None = None
    helo: str | None = None
    proto: str | None = None
    message_id: str | None = None
    new_queue_id: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def at(self, year: int, tz: tzinfo) -> datetime | None:
        """The line's time: ``parsed_time``, else month/day/clock in ``year`` and ``tz``."""
        if self.parsed_time is not None:
            return self.parsed_time
        if self.month is None or self.day is None or self.clock is None:
            return None
        hour, minute, second = self.clock.split(":")
        try:
            return datetime(year, self.month, self.day, int(hour), int(minute), int(second), 0, tz)
        except ValueError:  # 29 February in a year the caller guessed wrong
            return None

    def extra_value(self, key: str) -> str | None:
        """The first value named ``key`` in :attr:`extra`."""
        for name, value in self.extra:
            if name == key:
                return value
        return None


def _freeze(draft: Any) -> None:
    """``__post_init__`` of ``_Draft``: the filled object becomes a (frozen) :class:`LogRecord`.

    The two classes have identical slot layouts, so CPython allows the ``__class__`` switch;
    afterwards the object is an ordinary LogRecord (``==``, ``hash``, ``replace`` all work).
    """
    draft.__class__ = LogRecord


def _draft_class() -> Callable[..., LogRecord]:
    """A non-frozen twin of :class:`LogRecord` (same fields, slots and order) that freezes."""
    spec: list[Any] = [
        (f.name, f.type) if f.default is MISSING else (f.name, f.type, field(default=f.default))
        for f in fields(LogRecord)
    ]
    draft: Callable[..., LogRecord] = make_dataclass(
        "_Draft", spec, slots=True, eq=False, repr=False, namespace={"__post_init__": _freeze}
    )
    return draft


#: ``_new(kind, *head, **fields)`` builds a :class:`LogRecord` without paying for a frozen
#: dataclass's ``object.__setattr__`` per field (33 of them).
_new: Final = _draft_class()

#: The fields every record of one line shares: mta, program, service_name, pid, host,
#: timestamp, parsed_time, month, day, clock, queue_id (in :class:`LogRecord` order).
_Head: TypeAlias = tuple[
    Mta,
    str,
    str,
    "int | None",
    "str | None",
    "str | None",
    "datetime | None",
    "int | None",
    "int | None",
    "str | None",
    "str | None",
]


# --------------------------------------------------------------------------------------------
# Prefix
# --------------------------------------------------------------------------------------------

_MONTHS: Final = {
    "Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "May": 5, "Jun": 6,
    "Jul": 7, "Aug": 8, "Sep": 9, "Oct": 10, "Nov": 11, "Dec": 12,
}  # fmt: skip

#: Timestamp, optional BSD ``<facility.level>``, host, tag[pid], optional queue id. Shape
#: regexes match from its end. Queue ids: Postfix short (hex) and long (no vowels) ids,
#: ``NOQUEUE``, and Sendmail ids (letters and digits, at least one digit).
PREFIX: Final = re.compile(
    r"(?:(?P<ts>(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?)"
    r"|(?P<mon>[A-Z][a-z][a-z]) {1,2}(?P<day>\d\d?) (?P<clock>\d\d:\d\d:\d\d)) )?"
    r"(?:<\w+\.\w+> )?"
    r"(?:(?P<host>[^\s\[\]<>]+) )?"
    r"(?P<tag>[\w./-]+)(?:\[(?P<pid>\d+)\])?: "
    r"(?:(?P<qid>NOQUEUE|[0-9A-F]{5,20}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,20}"
    r"|(?=[A-Za-z]*\d)[0-9A-Za-z]{8,20}):(?: |(?=\w)))?"
)
#: For lines whose prefix we cannot read but that plainly come from our MTAs.
_LOOSE: Final = re.compile(
    r"(?:^|\s)(?P<tag>postfix[\w.-]*(?:/[\w.-]+)*|sendmail|sm-[\w.-]+)(?:\[(?P<pid>\d+)\])?: "
)

# --------------------------------------------------------------------------------------------
# Fragments and helpers
# --------------------------------------------------------------------------------------------

#: ``name[addr]`` with an optional ``:port`` (Postfix clients).
_CLIENT: Final = r"(?P<name>[^\s\[\]]+)\[(?P<addr>[^\]\s]*)\](?::(?P<port>\d+))?"
#: A reply's 3-digit and enhanced codes, if present, at the reply's start.
_CODES: Final = (
    r"(?:(?P<code>[2-5]\d\d)(?:[ \-,]|\Z))?(?:(?P<esc>[2-5]\.\d{1,3}\.\d{1,3})(?![\d.]))?"
)
_LEADING_CODES: Final = re.compile(_CODES)
#: The code of a remote reply in a delivery status text.
_REMOTE_CODE: Final = re.compile(
    r"(?:host \S+ (?:said|refused to talk to me): )?(?P<code>[2-5]\d\d)(?:[ \-]|\Z)"
)
#: Postfix's trailing ``; from=<s> to=<r> proto=P helo=<h>`` (postscreen separates with commas).
_TAIL: Final = re.compile(
    r"; (?=(?:from|to|proto|helo)=)"
    r"(?:from=<(?P<sender>[^>]*+)>?,? ?)?"
    r"(?:to=<(?P<rcpt>[^>]*+)>?,? ?)?"
    r"(?:proto=(?P<proto>[^\s,]*+),? ?)?"
    r"(?:helo=<?(?P<helo>.*?)>?)?\Z"
)
#: Sendmail's ``name [addr] (may be forged)`` / ``[addr]`` / ``name``.
_SM_CLIENT: Final = re.compile(r"(?P<name>[^\s\[\]]+)?(?: ?\[(?P<addr>[^\]]*)\])?")
_SM_DELAY: Final = re.compile(r"(?:\d+\+)?\d+:\d\d:\d\d\Z")
_COUNT: Final = re.compile(r"(\w+)=(\S+)")
_SM_FIELD: Final = re.compile(r"(?P<key>\w+)=(?P<value>.*?)(?=, \w+=|\Z)")

_STAGES: Final = {
    "CONNECT": "connect",
    "HELO": "helo",
    "EHLO": "ehlo",
    "MAIL": "mail",
    "RCPT": "rcpt",
    "DATA": "data",
    "BDAT": "data",
    "END-OF-MESSAGE": "eom",
    "VRFY": "vrfy",
    "ETRN": "etrn",
}
_SM_RULESET_STAGES: Final = {
    "check_relay": "connect",
    "check_mail": "mail",
    "check_rcpt": "rcpt",
    "check_data": "data",
    "check_eom": "eom",
    "check_etrn": "etrn",
    "check_vrfy": "vrfy",
}
_SM_MILTER_STAGES: Final = {"from": "mail", "to": "rcpt", "helo": "helo", "connect": "connect"}
_SM_MILTER_ACTIONS: Final = {
    "reject": "milter-reject",
    "shutdown": "milter-reject",
    "rejecting commands": "milter-reject",
    "temp failing commands": "milter-tempfail",
    "discard": "milter-discard",
    "quarantine": "milter-quarantine",
}
_DSN_STATUS: Final = {"2": "sent", "4": "deferred", "5": "bounced"}


def _stage(command: str) -> str:
    """Postfix's SMTP command name as a lowercase stage (``END-OF-MESSAGE`` is ``eom``)."""
    return _STAGES.get(command) or command.lower()


def _pairs(text: str, sep: str) -> tuple[tuple[str, str], ...]:
    """``a=1<sep>b=2`` as ``(("a", "1"), ("b", "2"))``; words without ``=`` are skipped."""
    out = []
    for item in text.split(sep):
        key, eq, value = item.strip().partition("=")
        if eq:
            out.append((key, value))
    return tuple(out)


def _codes(line: str, pos: int) -> tuple[int | None, str | None]:
    """The 3-digit and enhanced codes of the reply starting at ``line[pos]``."""
    m = _LEADING_CODES.match(line, pos)
    if m is None:  # pragma: no cover - the pattern matches the empty string
        return None, None
    code, esc = m.groups()
    return (int(code) if code else None), esc


def _sm_seconds(text: str | None) -> float | None:
    """Sendmail's ``[D+]HH:MM:SS`` delay in seconds."""
    if not text or _SM_DELAY.match(text) is None:
        return None
    days, _, hms = text.rpartition("+")
    hours, minutes, seconds = hms.split(":")
    return float((int(days or 0) * 24 + int(hours)) * 3600 + int(minutes) * 60 + int(seconds))


def _sm_client(text: str | None) -> tuple[str | None, str | None]:
    """Sendmail's ``relay=`` text as (name, addr)."""
    if not text:
        return None, None
    m = _SM_CLIENT.match(text)
    if m is None:  # pragma: no cover - the pattern matches the empty string
        return None, None
    name, addr = m.groups()
    return name, addr


def _addresses(text: str) -> str:
    """Sendmail's ``to=`` list (``<a>,<b>`` or ``a``) as ``a,b``."""
    if "," not in text:
        return text.strip("<> ")
    return ",".join(part.strip("<> ") for part in text.split(","))


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------

_Build: TypeAlias = Callable[["re.Match[str]", str, _Head], LogRecord]


@dataclass(frozen=True, slots=True)
class _Shape:
    """One line shape: its name, its regex (anchored at the body), a builder and a real sample."""

    name: str
    regex: re.Pattern[str]
    build: _Build
    sample: str


def _shape(name: str, pattern: str, sample: str) -> Callable[[_Build], _Shape]:
    """Decorator: turn a builder function into a :class:`_Shape`."""

    def wrap(build: _Build) -> _Shape:
        return _Shape(name, re.compile(pattern), build, sample)

    return wrap


# -- Postfix: smtpd, postscreen, cleanup: replies our MTA gave a client ---------------------


def _reject(
    kind: str,
    m: re.Match[str],
    line: str,
    head: _Head,
    direction: Direction | None = "upstream",
    **values: Any,
) -> LogRecord:
    """Common part of smtpd/postscreen/milter rejects: reply, codes and the trailing keys."""
    start = m.end()
    tail = _TAIL.search(line, start)
    end = tail.start() if tail is not None else len(line)
    code = m["code"]
    sender = rcpt = proto = helo = None
    if tail is not None:
        sender, rcpt, proto, helo = tail.groups()
    return _new(
        kind,
        *head,
        direction=direction,
        stage=_stage(m["stage"]),
        action=m["action"],
        code=int(code) if code else None,
        enhanced=m["esc"],
        reply=line[start:end],
        sender=sender,
        recipient=rcpt or None,
        helo=helo or None,
        proto=proto or None,
        **values,
    )


@_shape(
    "smtpd_reject",
    r"(?P<action>reject|reject_warning|hold|discard): (?P<stage>[A-Z][A-Z-]*+) from "
    + _CLIENT
    + r": (?="
    + _CODES
    + ")",
    "Jul 12 07:47:48 saturn postfix/smtpd[8738]: NOQUEUE: reject: RCPT from "
    "1-2-3-4-example.com[1.2.3.4]: 554 5.7.1 <smtp@example.com>: Relay access denied; "
    "from=<john@example.com> to=<smtp@example.org> proto=SMTP helo=<198.51.100.17>",
)
def _smtpd_reject(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _reject("smtpd_reject", m, line, head, client_name=m["name"], client_addr=m["addr"])


@_shape(
    "smtpd_action",
    r"(?P<action>warn|info|filter|redirect|permit|bcc|prepend): (?P<stage>[A-Z][A-Z-]*+) from "
    + _CLIENT
    + r": (?="
    + _CODES
    + ")",
    "Jan 10 10:01:02 mx postfix/smtpd[1234]: NOQUEUE: filter: RCPT from mail.example.net"
    "[192.0.2.7]: <a@example.net>: Sender address triggers FILTER smtp:[127.0.0.1]:10025; "
    "from=<a@example.net> to=<b@example.org> proto=ESMTP helo=<mail.example.net>",
)
def _smtpd_action(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    """Access-table actions that do not refuse anything (warn, info, filter...)."""
    return _reject("noise", m, line, head, None, client_name=m["name"], client_addr=m["addr"])


@_shape(
    "milter_reject",
    r"(?P<action>milter-(?:reject|hold|discard)): (?P<stage>[A-Z][A-Z-]*+) from "
    + _CLIENT
    + r": (?="
    + _CODES
    + ")",
    "Jan 19 14:42:50 SYSTEMNAME postfix/cleanup[3101]: 40C12F39F: milter-reject: END-OF-MESSAGE "
    "from 45.Red-80-39-23.staticIP.rima-tde.net[80.39.23.45]: 5.7.1 Delivery not authorized, "
    "message refused!; from=<PierceJeremiah1411@example.com> to=<nonpollutingja@example.com> "
    "proto=ESMTP helo=<45.Red-80-39-23.staticIP.rima-tde.net>",
)
def _milter_reject(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _reject("milter_reject", m, line, head, client_name=m["name"], client_addr=m["addr"])


@_shape(
    "proxy_reject",
    r"(?P<action>proxy-reject): (?P<stage>[A-Z][A-Z-]*+): (?=" + _CODES + ")",
    "Mar  2 10:15:01 mx postfix/smtpd[4321]: 3F2A1C0D9: proxy-reject: END-OF-MESSAGE: "
    "554 5.7.0 Reject, id=12345-01 - spam; from=<a@example.net> to=<b@example.org> "
    "proto=ESMTP helo=<mail.example.net>",
)
def _proxy_reject(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    """A before-queue content filter refused the message (reply relayed to the client)."""
    return _reject("smtpd_reject", m, line, head)


@_shape(
    "postscreen_reject",
    r"(?P<action>reject): (?P<stage>[A-Z][A-Z-]*+) from \[(?P<addr>[^\]\s]*)\]:(?P<port>\d+): (?="
    + _CODES
    + ")",
    "May  5 15:51:11 xxx postfix/postscreen[1148]: NOQUEUE: reject: RCPT from "
    "[216.245.194.173]:60591: 550 5.7.1 Service unavailable; client [216.245.194.173] blocked "
    "using rbl.example.com; from=<spammer@example.com>, to=<goodguy@example.com>, proto=ESMTP, "
    "helo=<badguy.example.com>",
)
def _postscreen_reject(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _reject("postscreen_reject", m, line, head, client_addr=m["addr"])


_CHECK_TAIL: Final = re.compile(
    r" from (?P<name>[^\s\[\];]+)(?:\[(?P<addr>[^\]\s]*)\](?::\d+)?)?; "
    r"(?:from=<(?P<sender>[^>]*+)> ?)?(?:to=<(?P<rcpt>[^>]*+)> ?)?"
    r"(?:proto=(?P<proto>\S*+) ?)?(?:helo=<(?P<helo>[^>]*+)>)?(?:: (?P<reply>.*))?\Z"
)
_CHECK_REFUSALS: Final = frozenset({"reject", "hold", "discard"})


@_shape(
    "cleanup_check",
    r"(?P<action>(?:milter-(?:header|body)-)?(?:reject|warning|hold|discard|info|replace"
    r"|redirect|filter|prepend|bcc|strip)): "
    r"(?P<what>header|body|mime-header|nested-header) ",
    "Feb  3 11:22:33 mx postfix/cleanup[2211]: 5C1D22A0B3: reject: header Subject: "
    "You won! from mail.example.net[192.0.2.8]; from=<a@example.net> to=<b@example.org> "
    "proto=ESMTP helo=<mail.example.net>: 5.7.1 Message content rejected",
)
def _cleanup_check(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    """``header_checks``/``body_checks`` results; reject, hold and discard refuse the message."""
    action = m["action"]
    tail = _CHECK_TAIL.search(line, m.end())
    end = tail.start() if tail is not None else len(line)
    extra: tuple[tuple[str, str], ...] = ((m["what"], line[m.end() : end]),)
    if tail is None:
        return _new("noise", *head, action=action, extra=extra)
    reply = tail["reply"]
    refusal = action.rpartition("-")[2] in _CHECK_REFUSALS
    code, esc = _codes(line, tail.start("reply")) if reply and refusal else (None, None)
    if reply and not refusal:
        extra, reply = (*extra, ("text", reply)), None
    return _new(
        "smtpd_reject" if refusal else "noise",
        *head,
        direction="upstream" if refusal else None,
        stage="eom",
        action=action,
        code=code,
        enhanced=esc,
        reply=reply,
        sender=tail["sender"],
        recipient=tail["rcpt"] or None,
        client_name=tail["name"],
        client_addr=tail["addr"],
        helo=tail["helo"] or None,
        proto=tail["proto"] or None,
        extra=extra,
    )


@_shape(
    "client",
    r"client=" + _CLIENT + r"(?:, (?P<more>.*))?\Z",
    "Oct 30 13:19:26 mailgw-out1 postfix/smtpd[27530]: EB4B2C19E2: client=xxx[1.2.3.4], "
    "sasl_method=PLAIN, sasl_username=user@domain",
)
def _client(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    more = m["more"]
    return _new(
        "client",
        *head,
        client_name=m["name"],
        client_addr=m["addr"],
        extra=_pairs(more, ", ") if more else (),
    )


@_shape(
    "connect",
    r"connect from " + _CLIENT + r"\Z",
    "Nov 28 12:31:59 vm postfix/smtpd[19342]: connect from unknown[127.0.0.1]",
)
def _connect(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("connect", *head, client_name=m["name"], client_addr=m["addr"])


@_shape(
    "disconnect",
    r"disconnect from " + _CLIENT + r"(?P<counts>(?: \w+=\d+(?:/\d+)?)*)\Z",
    "Nov 28 12:31:59 vm postfix/smtpd[19342]: disconnect from unknown[127.0.0.1] ehlo=1 mail=1 "
    "rcpt=0/1 rset=1 quit=1 commands=4/5",
)
def _disconnect(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    counts = m["counts"]
    return _new(
        "disconnect",
        *head,
        client_name=m["name"],
        client_addr=m["addr"],
        extra=tuple(_COUNT.findall(counts)) if counts else (),
    )


@_shape(
    "lost_connection",
    r"lost connection after (?P<stage>[A-Z][A-Z-]*+)(?: \((?P<bytes>\d+) bytes\))? from "
    + _CLIENT
    + r"\Z",
    "Feb 18 09:50:05 xxx postfix/smtpd[42]: lost connection after DATA from "
    "good-host.example.com[192.0.2.10]",
)
def _lost_connection(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    size = m["bytes"]
    return _new(
        "lost_connection",
        *head,
        direction="upstream",
        stage=_stage(m["stage"]),
        client_name=m["name"],
        client_addr=m["addr"],
        extra=(("bytes", size),) if size else (),
    )


@_shape(
    "timeout",
    r"timeout after (?P<stage>[A-Z][A-Z-]*+)(?: \((?P<bytes>\d+) bytes\))? from " + _CLIENT + r"\Z",
    "Mar 15 20:42:13 helga postfix/submission/smtpd[482723]: timeout after EHLO from "
    "200123004113.gtdperu.pe[200.123.4.113]",
)
def _timeout(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    size = m["bytes"]
    return _new(
        "timeout",
        *head,
        direction="upstream",
        stage=_stage(m["stage"]),
        client_name=m["name"],
        client_addr=m["addr"],
        extra=(("bytes", size),) if size else (),
    )


@_shape(
    "smtpd_noise",
    r"(?:improper command pipelining|too many errors) after (?P<stage>[A-Z][A-Z-]*+) from ",
    "Jun  3 06:25:43 srv postfix/smtpd[29306]: too many errors after RCPT from "
    "example.com[192.0.2.11]",
)
def _smtpd_noise(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("noise", *head, stage=_stage(m["stage"]))


# -- postscreen -----------------------------------------------------------------------------


@_shape(
    "postscreen_connect",
    r"CONNECT from \[(?P<addr>[^\]\s]*)\]:(?P<port>\d+) to \[(?P<local>[^\]\s]*)\]:(?P<lport>\d+)",
    "Mar 14 00:00:31 helga postfix/postscreen[3163107]: CONNECT from [185.48.118.128]:36942 to "
    "[188.34.187.246]:25",
)
def _postscreen_connect(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("connect", *head, client_addr=m["addr"], extra=(("port", m["port"]),))


@_shape(
    "postscreen_disconnect",
    r"DISCONNECT \[(?P<addr>[^\]\s]*)\]:(?P<port>\d+)\Z",
    "Mar 14 00:00:33 helga postfix/postscreen[3163107]: DISCONNECT [185.48.118.128]:36942",
)
def _postscreen_disconnect(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("disconnect", *head, client_addr=m["addr"], extra=(("port", m["port"]),))


@_shape(
    "postscreen_hangup",
    r"HANGUP after (?P<after>[\d.]+) from \[(?P<addr>[^\]\s]*)\]:(?P<port>\d+)"
    r"(?: in (?P<where>.*))?\Z",
    "Dec 24 00:54:36 xxx postfix/postscreen[22515]: HANGUP after 16 from [192.0.2.3]:48119 in "
    "tests after SMTP handshake",
)
def _postscreen_hangup(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    where = m["where"]
    return _new(
        "lost_connection",
        *head,
        direction="upstream",
        client_addr=m["addr"],
        extra=(("after", m["after"]), ("in", where)) if where else (("after", m["after"]),),
    )


@_shape(
    "postscreen_noise",
    r"(?:PASS (?:NEW|OLD)|(?:WHITE|ALLOW|BLACK|DENY)LISTED|(?:WHITE|ALLOW)LIST VETO|PREGREET \d+"
    r"|DNSBL rank|COMMAND (?:TIME LIMIT|PIPELINING|COUNT LIMIT|LENGTH LIMIT)|NON-SMTP COMMAND"
    r"|BARE NEWLINE|cache \S+ full cleanup)\b",
    "Dec 23 19:39:13 xxx postfix/postscreen[21057]: PREGREET 14 after 0.08 from "
    "[192.0.2.2]:59415: EHLO ylmf-pc\\r\\n",
)
def _postscreen_noise(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("noise", *head)


# -- cleanup, qmgr, pickup, postsuper, bounce: the queue ------------------------------------


@_shape(
    "message_id",
    r"(?P<resent>resent-)?message-id=(?P<mid>.*)\Z",
    "Nov 28 12:31:59 vm postfix/cleanup[19346]: B935436B6B: "
    "message-id=<20261128123159.B935436B6B@vm>",
)
def _message_id(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    mid = m["mid"]
    if mid.startswith("<") and mid.endswith(">"):
        mid = mid[1:-1]
    if m["resent"]:
        return _new("message_id", *head, extra=(("resent_message_id", mid),))
    return _new("message_id", *head, message_id=mid or None)


@_shape(
    "queued",
    r"from=<(?P<sender>[^>]*+)>, size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+) \(queue active\)\Z",
    "Nov 28 12:31:59 vm postfix/qmgr[19298]: B935436B6B: from=<sender1@sender.test>, size=373, "
    "nrcpt=1 (queue active)",
)
def _queued(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new(
        "queued",
        *head,
        sender=m["sender"],
        extra=(("size", m["size"]), ("nrcpt", m["nrcpt"])),
    )


@_shape(
    "expired",
    r"from=<(?P<sender>[^>]*+)>, status=(?P<status>expired|force-expired), returned to sender\Z",
    "Dec 28 13:39:28 mx postfix/qmgr[22753]: C93CEB08A046: from=<ina@somedomain.com>, "
    "status=expired, returned to sender",
)
def _expired(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    status = m["status"]
    return _new(
        "expired",
        *head,
        direction="downstream",
        status="expired",
        sender=m["sender"],
        reply="returned to sender",
        extra=(("expiry", status),) if status != "expired" else (),
    )


@_shape(
    "removed",
    r"removed\Z",
    "Nov 28 12:31:59 vm postfix/qmgr[19298]: B935436B6B: removed",
)
def _removed(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("removed", *head)


@_shape(
    "queue_noise",
    r"(?:skipped, still being delivered|(?:Deleted|Requeued|Released from hold|Placed on hold):"
    r" \d+ messages?)\Z",
    "Feb  9 08:00:01 mx postfix/postsuper[5555]: Deleted: 3 messages",
)
def _queue_noise(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("noise", *head)


@_shape(
    "pickup",
    r"uid=(?P<uid>\d+) from=<(?P<sender>[^>]*+)>\Z",
    "Mar 14 06:27:34 helga postfix/pickup[320974]: 4PbMVG6Tmjz3tG3: uid=0 from=<root>",
)
def _pickup(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("noise", *head, sender=m["sender"], extra=(("uid", m["uid"]),))


@_shape(
    "bounce_notice",
    r"(?P<notice>(?:sender|postmaster) (?:non-delivery|delay|delivery status) notification): "
    r"(?P<new>\w+)\Z",
    "Dec 28 13:39:28 mx postfix/bounce[19155]: C93CEB08A046: sender non-delivery notification: "
    "B1B894562003",
)
def _bounce_notice(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new(
        "bounce_notice",
        *head,
        direction="downstream",
        new_queue_id=m["new"],
        extra=(("notice", m["notice"]),),
    )


# -- smtp, lmtp, local, virtual, pipe, error, discard: deliveries -----------------------------


@_shape(
    "delivery",
    r"to=<(?P<rcpt>[^>]*+)>, (?:orig_to=<(?P<orig>[^>]*+)>, )?relay=(?P<relay>[^,\s]*+), "
    r"(?:conn_use=(?P<conn_use>\d+), )?delay=(?P<delay>[\d.]+), "
    r"(?:delays=(?P<delays>[\d.]+(?:/[\d.]+)*), )?(?:dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), )?"
    r"status=(?P<status>[\w-]+)(?: \((?P<text>.*))?\Z",
    "Nov  3 16:04:31 myname postfix/smtp[30840]: 19B6B2900FE: to=<wietse@test.example.com>, "
    "orig_to=<wietse@test>, relay=mail.example.com[1.2.3.4], conn_use=2, delay=0.22, "
    "delays=0.04/0.01/0.05/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
)
def _delivery(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    rcpt, orig, relay, conn_use, delay, delays, dsn, status, text = m.groups()
    code = None
    extra: tuple[tuple[str, str], ...] = ()
    if text is not None:
        if text.endswith(")"):
            text = text[:-1]
        code = _remote_code(text)
        extra = _in_reply_to(text)
    if conn_use:
        extra = (("conn_use", conn_use), *extra)
    return _new(
        "delivery",
        *head,
        direction="downstream",
        code=code,
        enhanced=dsn,
        reply=text,
        status=status,
        recipient=rcpt or None,
        orig_recipient=orig,
        relay=relay,
        delay=float(delay),
        delays=tuple(map(float, delays.split("/"))) if delays else None,
        dsn=dsn,
        extra=extra,
    )


def _remote_code(text: str) -> int | None:
    """The code of the remote reply in a delivery text: ``250 ...`` or ``host x said: 550 ...``.

    The common case (a text starting with the code) is handled without a regex.
    """
    head = text[:4]
    if len(head) == 4 and head[:3].isdigit() and head[3] in " -" and head[0] in "2345":
        return int(head[:3])
    if not text.startswith("host "):
        return None
    said = _REMOTE_CODE.match(text)
    return int(said["code"]) if said is not None else None


def _in_reply_to(text: str) -> tuple[tuple[str, str], ...]:
    """``(("in_reply_to", "RCPT TO"),)`` for texts ending ``(in reply to RCPT TO command)``."""
    if not text.endswith(" command)"):
        return ()
    start = text.rfind("(in reply to ")
    if start < 0:
        return ()
    return (("in_reply_to", text[start + 13 : -9]),)


@_shape(
    "attempt",
    r"host (?P<relay>\S+) (?:said|refused to talk to me): " + _CODES,
    "Dec 29 02:54:09 mail postfix/smtp[7648]: 732BB407C3: host mail.domain.com[1.1.1.1] said: "
    "451 DT:SPM 163 mx13,P8CowECpNVM_oEVaenoEAQ--.23796S3 1514512449, please try again 15min "
    "later (in reply to end of DATA command)",
)
def _attempt(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    """A non-final delivery attempt: another MX (or a later retry) is still to come."""
    code = m["code"]
    text = line[m.start() :]
    return _new(
        "attempt",
        *head,
        direction="downstream",
        code=int(code) if code else None,
        enhanced=m["esc"],
        reply=text,
        relay=m["relay"],
        extra=_in_reply_to(text),
    )


@_shape(
    "attempt_lost",
    r"(?:lost connection|conversation) with (?P<relay>\S+) (?:timed out )?while ",
    "Nov 20 23:33:33 mail postfix/smtp[21530]: 84FC51F660C: lost connection with "
    "etb-3.mail.tiscali.it[213.205.33.64] while sending end of data -- message may be sent more "
    "than once",
)
def _attempt_lost(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new(
        "attempt",
        *head,
        direction="downstream",
        reply=line[m.start() :],
        relay=m["relay"],
    )


@_shape(
    "connection_error",
    r"connect to (?P<relay>\S+?): (?P<text>.+)\Z",
    "Dec 27 02:38:54 mx postfix/smtp[24234]: connect to arobor.ru[178.210.73.19]:25: "
    "Connection timed out",
)
def _connection_error(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new(
        "connection_error",
        *head,
        direction="downstream",
        reply=m["text"],
        relay=m["relay"],
    )


@_shape(
    "smtp_noise",
    r"(?:enabling PIX workarounds|Host offered STARTTLS|(?:server|client) certificate "
    r"verification failed)\b",
    "Apr  4 09:10:11 mx postfix/smtp[777]: 4A1B2C3D4E: enabling PIX workarounds: "
    "disable_esmtp delay_dotcrlf for mail.example.com[192.0.2.9]:25",
)
def _smtp_noise(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("noise", *head)


# -- every Postfix program ---------------------------------------------------------------------


@_shape(
    "warning",
    # (Sendmail's startup "error: safesasl(...)" is sendmail_noise)
    r"(?P<level>warning|error|fatal|panic): "
    r"(?!(?:header|body|mime-header|nested-header) |safesasl\()"
    r"(?:milter (?P<milter>\S+): )?",
    "Feb 25 15:57:27 mframe1 postfix/smtpd[25140]: warning: Illegal address syntax from "
    "localhost[127.0.0.1] in RCPT command: <name@62.157.140.137>",
)
def _warning(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    level, milter = m["level"], m["milter"]
    extra = [("level", level), ("message", line[m.end() :])]
    if milter:
        extra.append(("milter", milter))
    return _new("warning", *head, extra=tuple(extra))


@_shape(
    "tls_noise",
    r"(?:(?:Anonymous|Untrusted|Trusted|Verified) TLS connection established (?:to|from) "
    r"|setting up TLS connection (?:to|from) |SSL_(?:accept|connect) error (?:to|from) "
    r"|TLS SNI )",
    "Jul 24 04:38:17 mail postfix/smtp[30582]: Verified TLS connection established to "
    "gmail-smtp-in.l.google.com[108.177.14.26]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 "
    "(256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256",
)
def _tls_noise(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("noise", *head)


@_shape(
    "daemon_noise",
    r"(?:daemon started -- |terminating on signal |reload -- |(?:starting|stopping|refreshing"
    r"|reloading) the Postfix mail system|Postfix is (?:running|using) |See https?://"
    r"|using backwards-compatible default setting|table \S+ has changed -- restarting"
    r"|statistics: |addr \S+ listed by domain )",
    "Oct 25 17:36:47 vps331845 postfix[6084]: Postfix is running with backwards-compatible "
    "default setting",
)
def _daemon_noise(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new("noise", *head)


# -- Sendmail -----------------------------------------------------------------------------------


@_shape(
    "sendmail_to",
    r"to=(?=\S)(?=.*?, delay=(?:\d+\+)?\d+:\d\d:\d\d, )(?=.*?, pri=\d)(?=.*?, stat=)",
    "Apr  2 00:15:25 mta001 sendmail[12566]: u31FFPtp032300: to=<deferred1@example.com>, "
    "delay=00:00:15, xdelay=00:00:15, mailer=esmtp, pri=34527, relay=[93.184.216.34] "
    "[93.184.216.34], dsn=4.3.5, stat=Deferred: 451 4.3.5 Server configuration problem",
)
def _sendmail_to(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    """A Sendmail recipient status: a delivery, or (without mailer/xdelay/dsn) a recipient of a
    message that was never accepted (refused at end of data, or its client timed out).

    ``to=<list>, key=value, ..., stat=<text>`` is split with plain string scans (``stat=`` is
    always last), not one regex, so that no input can make it backtrack.
    """
    start = m.end()
    stat_at = line.find(", stat=", start)
    stat = line[stat_at + 7 :]
    first = _SM_NEXT_FIELD.search(line, start, stat_at)
    end = first.start() if first is not None else stat_at
    to = _addresses(line[start:end].removesuffix(" [more]"))
    fields = _sm_fields(line[end + 2 : stat_at]) if first is not None else {}
    if "mailer" not in fields and "xdelay" not in fields and "dsn" not in fields:
        return _sendmail_refused_rcpt(to, fields, stat, head)
    dsn, reply = fields.get("dsn"), fields.get("reply")
    status = _DSN_STATUS.get(dsn[0]) if dsn else _stat_status(stat)
    extra = [("stat", stat)]
    extra += [(k, fields[k]) for k in _SM_EXTRA if k in fields]
    return _new(
        "sendmail_delivery",
        *head,
        direction="downstream",
        code=_sm_code(reply, stat),
        enhanced=dsn,
        reply=reply or stat,
        status=status,
        recipient=to,
        relay=fields.get("relay"),
        delay=_sm_seconds(fields.get("delay")),
        dsn=dsn,
        extra=tuple(extra),
    )


_SM_NEXT_FIELD: Final = re.compile(r", (?=[a-z_]+=)")
_SM_DSN: Final = re.compile(r"\d\.\d{1,3}\.\d{1,3}\Z")
_SM_EXTRA: Final = ("pri", "mailer", "xdelay", "ctladdr", "quarantine", "ntries", "stage")


def _sm_fields(text: str) -> dict[str, str]:
    """Sendmail's ``key=value, key=value`` run as a dict (a bad ``dsn=`` is dropped).

    One published log lost the comma in ``relay=host dsn=4.0.0``; that is split too.
    """
    fields = dict(_SM_FIELD.findall(text))
    relay = fields.get("relay")
    if relay is not None and "dsn" not in fields and " dsn=" in relay:
        fields["relay"], _, fields["dsn"] = relay.partition(" dsn=")
    dsn = fields.get("dsn")
    if dsn is not None and _SM_DSN.match(dsn) is None:
        del fields["dsn"]
    return fields


def _stat_status(stat: str) -> str | None:
    """Sendmail's status word when no dsn= was logged."""
    if stat.startswith("Sent"):
        return "sent"
    if stat.startswith("Deferred"):
        return "deferred"
    return None


def _sm_code(reply: str | None, stat: str) -> int | None:
    """The remote reply's code: from ``reply=``, else from ``stat=Deferred: 451 ...``.

    ``stat=Sent (...)`` carries the remote text without its code.
    """
    if reply:
        text = reply
    elif stat.startswith("Sent"):
        return None
    else:
        text = stat[10:] if stat.startswith("Deferred: ") else stat
    m = _LEADING_CODES.match(text)
    code = m["code"] if m is not None else None
    return int(code) if code else None


_SM_LOST_TEXTS: Final = ("lost input channel", "collect: I/O error", "collect: premature EOM")


def _sendmail_refused_rcpt(to: str, fields: dict[str, str], stat: str, head: _Head) -> LogRecord:
    common: dict[str, Any] = {
        "direction": "upstream",
        "recipient": to,
        "delay": _sm_seconds(fields.get("delay")),
        "reply": stat,
        "extra": (("stat", stat), ("pri", fields.get("pri", ""))),
    }
    if stat.startswith("timeout waiting for input"):
        return _new("timeout", *head, stage="data", **common)
    if stat == "aborted by sender":  # RSET or QUIT ended the transaction: no reply in it
        return _new("noise", *head, recipient=to, extra=common["extra"])
    if stat.startswith(_SM_LOST_TEXTS):
        return _new("lost_connection", *head, stage="data", **common)
    code, esc = _codes(stat, 0)
    return _new(
        "sendmail_milter_reject",
        *head,
        stage="eom",
        action="milter-reject",
        code=code,
        enhanced=esc,
        **common,
    )


@_shape(
    "sendmail_from",
    r"from=(?P<from><[^>]*+>|[^,\s]*+), size=(?P<size>\d+), class=(?P<class>-?\d+), "
    r"nrcpts=(?P<nrcpts>\d+)(?:, (?P<more>.*))?\Z",
    "Jan  5 00:14:44 a.mx.example.net sm-mta[14292]: jB88Ea4v014292: from=<u5412@h4636.com>, "
    "size=2710, class=0, nrcpts=1, msgid=<u5413@h4636.com>, bodytype=8BITMIME, proto=ESMTP, "
    "daemon=MTA, relay=relay_id [10.11.12.13]",
)
def _sendmail_from(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    extra = [("size", m["size"]), ("class", m["class"]), ("nrcpts", m["nrcpts"])]
    more = m["more"]
    values: dict[str, Any] = {}
    if more:
        for key, value in _SM_FIELD.findall(more):
            if key == "relay":
                values["relay"] = value
                values["client_name"], values["client_addr"] = _sm_client(value)
            elif key == "msgid":
                values["message_id"] = value.strip("<>") or None
            elif key == "proto":
                values["proto"] = value
            else:
                extra.append((key, value))
    return _new(
        "sendmail_from",
        *head,
        sender=m["from"].strip("<>"),
        extra=tuple(extra),
        **values,
    )


@_shape(
    "sendmail_ruleset_reject",
    r"ruleset=(?P<ruleset>[^,\s]+), arg1=(?=.*?, (?:reject=|discard\Z|quarantine=))",
    "Feb 27 15:49:02 batman sm-mta[88377]: s1REn1un088377: ruleset=check_rcpt, "
    "arg1=<non-existing-user@example.com>, relay=189-30-205-74.paebv701.dsl.brasiltelecom.net.br"
    " [189.30.205.74], reject=550 5.1.1 <non-existing-user@example.com>... User unknown",
)
def _sendmail_ruleset_reject(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    """``ruleset=R, arg1=A[, arg2=B][, relay=H], reject=T|discard|quarantine=Q``, split with
    string scans from both ends (the arguments are free text)."""
    ruleset, start = m["ruleset"], m.end()
    action, reply, quarantine = "reject", None, None
    cut = line.find(", reject=", start)
    if cut >= 0:
        reply = line[cut + 9 :]
    elif line.endswith(", discard"):
        action, cut = "discard", len(line) - 9
    else:
        action, cut = "quarantine", line.find(", quarantine=", start)
        quarantine = line[cut + 13 :]
    args = line[start:cut]
    args, _, relay = args.partition(", relay=") if ", relay=" in args else (args, "", None)
    arg1, _, arg2 = args.partition(", arg2=")
    name, addr = _sm_client(relay)
    code, esc = _codes(line, cut + 9) if reply is not None else (None, None)
    extra = [("ruleset", ruleset), ("arg1", arg1)]
    extra += [(k, v) for k, v in (("arg2", arg2), ("quarantine", quarantine)) if v]
    return _new(
        "sendmail_ruleset_reject",
        *head,
        direction="upstream",
        stage=_SM_RULESET_STAGES.get(ruleset),
        action=action,
        code=code,
        enhanced=esc,
        reply=reply,
        sender=arg1.strip("<>") if ruleset == "check_mail" else None,
        recipient=arg1.strip("<>") if ruleset == "check_rcpt" else None,
        client_name=name,
        client_addr=addr,
        relay=relay,
        extra=tuple(extra),
    )


@_shape(
    "sendmail_milter_reject",
    r"Milter: (?:(?P<key>from|to|helo)=(?P<arg>.*?)|(?P<connect>connect): host=(?P<host>[^,\s]*), "
    r"addr=(?P<addr>[^,\s]*)|cmd=(?P<cmd>\w+)|data), "
    r"(?P<action>reject|shutdown|rejecting commands|temp failing commands|discard|quarantine)"
    r"(?:=(?=" + _CODES + r")(?P<reply>.*))?\Z",
    "Jan  5 00:13:30 d.mx.example.net sm-mta[12001]: jB88D0Ng012001: Milter: to=<u5@h6.com>, "
    "reject=550 5.7.1 Recipient declines mail from a_host bogus helo info, please fix your system",
)
def _sendmail_milter_reject(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    key, arg, cmd = m["key"], m["arg"], m["cmd"]
    stage = _SM_MILTER_STAGES.get(key or m["connect"] or "") or ("data" if cmd else "eom")
    code, reply = m["code"], m["reply"]
    return _new(
        "sendmail_milter_reject",
        *head,
        direction="upstream",
        stage=stage,
        action=_SM_MILTER_ACTIONS[m["action"]],
        code=int(code) if code else None,
        enhanced=m["esc"],
        reply=_sm_milter_reply(reply) if reply else reply,
        sender=arg.strip("<>") if key == "from" else None,
        recipient=arg.strip("<>") if key == "to" else None,
        helo=arg if key == "helo" else None,
        client_name=m["host"],
        client_addr=m["addr"],
    )


_SM_ESCAPE: Final = re.compile(r"\\(.)")
_SM_ESCAPES: Final = {"r": "", "n": "\n", "t": "\t", "\\": "\\"}


def _sm_milter_reply(text: str) -> str:
    """A milter's reply as the client got it: Sendmail logs the reply it was handed, with its
    line breaks as ``\\r\\n`` and libmilter's ``%%`` for ``%`` (it expands them when it sends);
    the lines are joined by ``\\n`` here, as in the milter's own events."""
    if "\\" in text:
        text = _SM_ESCAPE.sub(lambda e: _SM_ESCAPES.get(e[1], e[0]), text)
    return text.replace("%%", "%")


@_shape(
    "sendmail_reject",
    r"(?P<addr><[^<>]*>|[^\s<>]+?)\.\.\. (?=" + _CODES + r")",
    "Jun 17 14:37:39 <mail.notice> robin sm-mta[2794]: 55HIbcGI002794: "
    "<baduser@yourhost.com>... User unknown",
)
def _sendmail_reject(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    """Sendmail's own error for an address it refused (``<addr>... User unknown``)."""
    code = m["code"]
    return _new(
        "sendmail_reject",
        *head,
        direction="upstream",
        stage="rcpt",
        action="reject",
        code=int(code) if code else None,
        enhanced=m["esc"],
        reply=line[m.end() :],
        recipient=m["addr"].strip("<>"),
    )


@_shape(
    "sendmail_dsn",
    r"(?P<new>(?=[A-Za-z]*\d)[0-9A-Za-z]{8,20}): (?P<notice>DSN|return to sender|postmaster "
    r"notify|sender notify): (?P<text>.*)\Z",
    "Jan  5 00:14:46 a.mx.example.net sm-mta[14560]: jB88Ea4v014292: jB88Ek4v014560: DSN: "
    "User unknown",
)
def _sendmail_dsn(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    return _new(
        "bounce_notice",
        *head,
        direction="downstream",
        reply=m["text"],
        new_queue_id=m["new"],
        extra=(("notice", m["notice"]),),
    )


@_shape(
    "sendmail_lost_input",
    r"lost input channel from (?P<client>.+?) to (?P<daemon>\S+) after (?P<stage>\w+)\Z",
    "Jan  5 00:13:30 b.mx.example.net sm-mta[7916]: jB88DCqu007916: lost input channel from "
    "a_host [10.11.12.13] (may be forged) to MTA after rcpt",
)
def _sendmail_lost_input(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    name, addr = _sm_client(m["client"])
    return _new(
        "lost_connection",
        *head,
        direction="upstream",
        stage=_stage(m["stage"].upper()),
        client_name=name,
        client_addr=addr,
        extra=(("daemon", m["daemon"]),),
    )


@_shape(
    "sendmail_collect_error",
    r"(?:SYSERR\([^)]*\): )?collect: (?>(?P<what>[^:]+?) on connection from )(?P<client>[^,]*?),? "
    r"from=(?P<sender>\S*)\Z",
    "Jan  5 00:14:21 b.mx.example.net sm-mta[6116]: jB87hKsl006116: SYSERR(root): collect: I/O "
    "error on connection from a_host from=<u3965@u3965.org>",
)
def _sendmail_collect_error(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    name, addr = _sm_client(m["client"])
    return _new(
        "lost_connection",
        *head,
        direction="upstream",
        stage="data",
        reply=m["what"],
        sender=m["sender"].strip("<>"),
        client_name=name,
        client_addr=addr,
    )


@_shape(
    "sendmail_timeout",
    r"timeout waiting for input from (?P<client>.+?) during (?P<during>.+)\Z",
    "Jan  5 00:13:47 a.mx.example.net sm-mta[10890]: jB87DYhq010890: timeout waiting for input "
    "from a_host during server cmd read",
)
def _sendmail_timeout(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    name, addr = _sm_client(m["client"])
    return _new(
        "timeout",
        *head,
        direction="upstream",
        client_name=name,
        client_addr=addr,
        extra=(("during", m["during"]),),
    )


@_shape(
    "sendmail_warning",
    r"(?:Milter \((?P<milter>[^)]*)\)|milter_\w+\((?P<in_milter>[^)]*)\)|SYSERR\((?P<user>[^)]*)\)"
    r"|Milter): (?!collect: )"
    r"(?!(?:from|to|helo|cmd)=|connect: |data, |no active filter"
    r"|(?:init success to negotiate|abort filter|connect to filters)\Z)",
    "Jan  5 00:13:47 a.mx.example.net sm-mta[10890]: jB87DYhq010890: Milter (filter1): "
    "write(Q) returned -1, expected 5: Broken pipe",
)
def _sendmail_warning(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    """A milter or system problem: ``Milter (name): ...`` (``to error state`` when Sendmail
    goes on without the milter), ``milter_sys_read(name): ...``, ``SYSERR(user): ...``."""
    milter = m["milter"] or m["in_milter"]
    extra = [("level", "syserr" if m["user"] is not None else "milter")]
    extra.append(("message", line[m.end() :]))
    if milter is not None:
        extra.append(("milter", milter))
    return _new("warning", *head, extra=tuple(extra))


@_shape(
    "sendmail_noise",
    r"(?:done; delay=|(?:\S+ )?(?:\[[^\]]*\] )?(?:\(may be forged\) )?did not issue "
    r"|\[[^\]]*\]: possible SMTP attack|AUTH(?:=\w+,| failure)|STARTTLS(?:=\w+,|: )"
    r"|Authentication-Warning|Losing |clone: |starting daemon |alias database "
    r"|Milter: no active filter|Milter (?:add|change|insert|delete|accept|message)\b"
    r"|(?:discarded|quarantined)\Z"
    # LogLevel 10+ and Milter.LogLevel 10+ lines (8.17): sessions, milter steps, startup
    r"|connect from (?:[^\s\[\]]+ )?\[[^\]]*\]|AUTH: available mech=|SMTP outgoing connect on "
    r"|milter=[^,\s]+, action=\w+, "
    r"|Milter(?: \([^)]*\): (?:init success to negotiate|abort filter)|: connect to filters)\Z"
    r"|stopping daemon, reason=|started as: |engine=\S*, path=|error: safesasl\("
    r"|\S+: \d+ aliases, longest )",
    "Apr  2 00:15:25 mta001 sendmail[32302]: u31FFPtp032300: done; delay=00:00:00, ntries=2",
)
def _sendmail_noise(m: re.Match[str], line: str, head: _Head) -> LogRecord:
    """Lines that carry no reply or delivery: session and milter steps, startup, statistics.

    ``milter=NAME, action=rcpt, reject=...`` is noise too: the same reply is logged again as
    ``Milter: to=<...>, reject=...`` (:func:`_sendmail_milter_reject`).
    """
    return _new("noise", *head)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

_ANY_POSTFIX: Final = (_warning, _daemon_noise, _tls_noise)
_SMTPD: Final = (
    _connect,
    _disconnect,
    _client,
    _smtpd_reject,
    _milter_reject,
    _lost_connection,
    _timeout,
    _smtpd_noise,
    _smtpd_action,
    _proxy_reject,
    *_ANY_POSTFIX,
)
_POSTSCREEN: Final = (
    _postscreen_connect,
    _postscreen_disconnect,
    _postscreen_reject,
    _postscreen_hangup,
    _postscreen_noise,
    *_ANY_POSTFIX,
)
_CLEANUP: Final = (_message_id, _milter_reject, _cleanup_check, *_ANY_POSTFIX)
_QMGR: Final = (_queued, _removed, _expired, _queue_noise, *_ANY_POSTFIX)
_SMTP: Final = (_delivery, _connection_error, _attempt, _attempt_lost, _smtp_noise, *_ANY_POSTFIX)
_LOCAL: Final = (_delivery, *_ANY_POSTFIX)
_BOUNCE: Final = (_bounce_notice, *_ANY_POSTFIX)

#: Postfix program (the last part of the syslog tag) -> the shapes to try, most frequent first.
_BY_PROGRAM: Final[dict[str, tuple[_Shape, ...]]] = {
    "smtpd": _SMTPD,
    "postscreen": _POSTSCREEN,
    "cleanup": _CLEANUP,
    "qmgr": _QMGR,
    "nqmgr": _QMGR,
    "oqmgr": _QMGR,
    "smtp": _SMTP,
    "lmtp": _SMTP,
    "local": _LOCAL,
    "virtual": _LOCAL,
    "pipe": _LOCAL,
    "error": _LOCAL,
    "retry": _LOCAL,
    "discard": _LOCAL,
    "bounce": _BOUNCE,
    "defer": _BOUNCE,
    "trace": _BOUNCE,
    "pickup": (_pickup, *_ANY_POSTFIX),
    "postsuper": (_removed, _queue_noise, *_ANY_POSTFIX),
    "tlsproxy": (_postscreen_connect, _postscreen_disconnect, *_ANY_POSTFIX),
}
_OTHER_POSTFIX: Final = _ANY_POSTFIX
_SENDMAIL: Final = (
    _sendmail_to,
    _sendmail_from,
    _sendmail_ruleset_reject,
    _sendmail_milter_reject,
    _sendmail_reject,
    _sendmail_dsn,
    _sendmail_lost_input,
    _sendmail_collect_error,
    _sendmail_timeout,
    _sendmail_warning,
    _sendmail_noise,
)
_ALL_SHAPES: Final = tuple(
    dict.fromkeys((*_SMTPD, *_POSTSCREEN, *_CLEANUP, *_QMGR, *_SMTP, *_LOCAL, *_BOUNCE,
                   *(s for t in _BY_PROGRAM.values() for s in t), *_SENDMAIL))
)  # fmt: skip

_Dispatch: TypeAlias = tuple[tuple[Callable[[str, int], "re.Match[str] | None"], _Build], ...]


def _dispatch(shapes: tuple[_Shape, ...]) -> _Dispatch:
    """A table as (bound ``regex.match``, builder) pairs: no attribute lookups per try."""
    return tuple((s.regex.match, s.build) for s in shapes)


_DISPATCH: Final = {program: _dispatch(shapes) for program, shapes in _BY_PROGRAM.items()}
_DISPATCH_OTHER: Final = _dispatch(_OTHER_POSTFIX)
_DISPATCH_SENDMAIL: Final = _dispatch(_SENDMAIL)

#: ``(name, regex, sample line)`` for every shape the parser knows. Each regex matches a
#: line's body, from the end of :data:`PREFIX`'s match.
SHAPES: Final = tuple((s.name, s.regex, s.sample) for s in _ALL_SHAPES)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def parse_line(line: str) -> LogRecord | None:
    """Parse one mail log line.

    Returns ``None`` for lines that do not come from Postfix or Sendmail, and a record of kind
    ``"unknown"`` for their lines that no shape matches. Never raises on any input.
    """
    line = line.rstrip()
    m = PREFIX.match(line)
    if m is None:
        return _loose(line)
    ts, iso, mon, day, clock, host, tag, pid, qid = m.groups()
    program = tag.rpartition("/")[2]
    mta: Mta
    if tag.startswith("postfix") or ("/" in tag and program in _DISPATCH):
        mta, table = "postfix", _DISPATCH.get(program, _DISPATCH_OTHER)
    elif tag == "sendmail" or tag.startswith("sm-"):
        mta, table = "sendmail", _DISPATCH_SENDMAIL
    else:
        return None
    head: _Head = (
        mta,
        program,
        tag,
        int(pid) if pid else None,
        host,
        ts,
        _iso(iso) if iso else None,
        _MONTHS.get(mon),
        int(day) if day else None,
        clock,
        None if qid == "NOQUEUE" else qid,
    )
    pos = m.end()
    for match, build in table:
        body = match(line, pos)
        if body is not None:
            return build(body, line, head)
    return _new("unknown", *head, extra=(("text", line[pos:]),))


def _iso(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _loose(line: str) -> LogRecord | None:
    """A Postfix/Sendmail line with a prefix we cannot read: kind ``"unknown"``, or ``None``."""
    m = _LOOSE.search(line)
    if m is None:
        return None
    tag, pid = m.groups()
    mta: Mta = "sendmail" if tag == "sendmail" or tag.startswith("sm-") else "postfix"
    head: _Head = (
        mta,
        tag.rpartition("/")[2],
        tag,
        int(pid) if pid else None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )
    return _new("unknown", *head, extra=(("text", line[m.end() :]),))
