"""One Postfix 3.x or Sendmail 8.x mail log line in, one :class:`LogRecord` out.

Theory of operation
-------------------
A mail log line is ``<timestamp> [<facility.level>] <host> <tag>[<pid>]: [<queue id>: ]<body>``.
``PREFIX`` matches all of that once, for the three timestamp forms (classic syslog
``Dec  4 04:30:09``, Postfix's ``maillog_file`` ``Nov 28 12:19:08`` and RFC 3339
``2024-04-25T22:25:16.352700+02:00``) and any Postfix ``syslog_name`` (``postfix/submission/smtpd``,
``postfix-out/smtp``) or Sendmail tag (``sendmail``, ``sm-mta``, ``sm-msp-queue``...). The program
is the tag's last path component. It picks a short, ordered tuple of *shapes*
(:data:`smtp_policy.maillog.postfix.BY_PROGRAM`,
:data:`smtp_policy.maillog.sendmail.SENDMAIL_SHAPES`): each shape is one small named regex
anchored at the body, a builder that turns its match into a record, and a real sample line. The
first shape that matches wins; no shape matching gives kind ``"unknown"`` (so callers can count
what we do not understand), and a line that is not from Postfix or Sendmail at all gives
``None``. No two shapes overlap: the tests check that every sample (and every golden line)
matches one shape and no other, as fail2ban's sample tests do.

Speed: one prefix match, one or two body matches, no dicts or intermediate objects beyond the
record (Sendmail lines excepted). Lines in the common form (a classic syslog stamp, then
``host tag[pid]: ``) skip :data:`PREFIX`: a log's lines share their second and their process, so
the stamp's fields and the source's fields (with the shapes to try) come from two bounded caches
keyed by the text itself, and only the queue id is matched per line; every other form takes
:data:`PREFIX` (:func:`parse_prefixed`, the reference a property test holds the caches to).
The dispatch tables are built once, at import, as (bound ``regex.match``, builder) pairs, and
records are built without a frozen dataclass's per-field cost
(:data:`smtp_policy.maillog.record.new_record`). Nothing here reads a file, the clock or the
environment, and nothing here logs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Final, TypeAlias

from smtp_policy.maillog._shapes import Build, Head, Shape
from smtp_policy.maillog.postfix import ANY_PROGRAM, BY_PROGRAM, POSTFIX_SHAPES
from smtp_policy.maillog.record import LogRecord, Mta, new_record
from smtp_policy.maillog.sendmail import SENDMAIL_SHAPES

__all__ = ["PREFIX", "SHAPES", "parse_line"]

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
# Dispatch
# --------------------------------------------------------------------------------------------

_Dispatch: TypeAlias = tuple[tuple[Callable[[str, int], "re.Match[str] | None"], Build], ...]


def _dispatch(shapes: tuple[Shape, ...]) -> _Dispatch:
    """A table as (bound ``regex.match``, builder) pairs: no attribute lookups per try."""
    return tuple((s.regex.match, s.build) for s in shapes)


_DISPATCH: Final = {program: _dispatch(shapes) for program, shapes in BY_PROGRAM.items()}
_DISPATCH_OTHER: Final = _dispatch(ANY_PROGRAM)
_DISPATCH_SENDMAIL: Final = _dispatch(SENDMAIL_SHAPES)


def _shapes_of(tag: str, program: str) -> tuple[Mta, _Dispatch] | None:
    """The MTA a syslog tag (``postfix/smtpd``, ``sm-mta``) names and the line shapes to try
    for its ``program`` (the tag's last part); None for another program's tag."""
    if tag.startswith("postfix") or ("/" in tag and program in _DISPATCH):
        return "postfix", _DISPATCH.get(program, _DISPATCH_OTHER)
    if tag == "sendmail" or tag.startswith("sm-"):
        return "sendmail", _DISPATCH_SENDMAIL
    return None


#: ``(name, regex, sample line)`` for every shape the parser knows. Each regex matches a
#: line's body, from the end of :data:`PREFIX`'s match.
SHAPES: Final = tuple((s.name, s.regex, s.sample) for s in (*POSTFIX_SHAPES, *SENDMAIL_SHAPES))


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def parse_line(line: str) -> LogRecord | None:
    """Parse one mail log line.

    Returns ``None`` for lines that do not come from Postfix or Sendmail, and a record of kind
    ``"unknown"`` for their lines that no shape matches. Never raises on any input.
    """
    line = line.rstrip()
    fast = _fast_prefix(line)
    if fast is not None:
        head, table, pos = fast
        if not table:  # another program's line (_FOREIGN)
            return None
        for match, build in table:
            body = match(line, pos)
            if body is not None:
                return build(body, line, head)
        return new_record("unknown", *head, extra=(("text", line[pos:]),))
    return parse_prefixed(line)


def parse_prefixed(line: str) -> LogRecord | None:
    """:func:`parse_line` without the caches: :data:`PREFIX` reads every line (the reference
    the cached path is tested against). ``line`` has no trailing white space."""
    m = PREFIX.match(line)
    if m is None:
        return _loose(line)
    ts, iso, mon, day, clock, host, tag, pid, qid = m.groups()
    program = tag.rpartition("/")[2]
    ours = _shapes_of(tag, program)
    if ours is None:
        return None
    mta, table = ours
    head: Head = (
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
    return new_record("unknown", *head, extra=(("text", line[pos:]),))


# --------------------------------------------------------------------------------------------
# The common prefix, from caches
# --------------------------------------------------------------------------------------------

#: A classic syslog stamp, exactly the 16 characters ``Nov 28 12:19:08 `` or ``Dec  4 ...``.
_STAMP: Final = re.compile(r"([A-Z][a-z][a-z]) {1,2}(\d\d?) (\d\d:\d\d:\d\d) ")
#: ``host tag[pid]: `` after such a stamp (what :data:`PREFIX` reads there, no facility).
_SOURCE: Final = re.compile(r"([^\s\[\]<>]+) ([\w./-]+)\[(\d+)\]: ")
#: The queue id after the prefix, as :data:`PREFIX` reads it.
_QUEUE_ID: Final = re.compile(
    r"(NOQUEUE|[0-9A-F]{5,20}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,20}"
    r"|(?=[A-Za-z]*\d)[0-9A-Za-z]{8,20}):(?: |(?=\w))"
)
#: Entries per cache; a full cache is emptied (the log's seconds and processes move on).
PREFIX_CACHE: Final = 512
#: The longest ``host tag[pid]: `` kept in the cache (longer ones take the full path).
MAX_SOURCE_CHARS: Final = 256

_Stamp: TypeAlias = tuple["str | None", None, "int | None", int, str]
_Source: TypeAlias = tuple[tuple[Mta, str, str, int, str], _Dispatch]
_NOT_OURS: Final[_Source] = (("postfix", "", "", 0, ""), ())
_Fast: TypeAlias = tuple[Head, _Dispatch, int]
#: Another program's line: the one result with no shapes to try (tested by emptiness, not
#: identity, so that the module also works compiled, where tuples are values).
_FOREIGN: Final[_Fast] = (("postfix", "", "", *(None,) * 8), (), 0)
_stamps: dict[str, _Stamp | None] = {}
_sources: dict[str, _Source | None] = {}


def _fast_prefix(line: str) -> _Fast | None:
    """The head, shape table and body position of a line in the common form (classic stamp,
    host, ``tag[pid]: ``), from two caches: the stamp (lines share their second) and the
    source (lines share their process); :data:`_FOREIGN` for another program's line; None
    for any other form (:data:`PREFIX` reads it). Gives exactly what :data:`PREFIX` would."""
    key = line[:16]
    try:
        stamp = _stamps[key]
    except KeyError:  # once per second of log time
        m = _STAMP.fullmatch(key)
        stamp = None if m is None else (key[:15], None, _MONTHS.get(m[1]), int(m[2]), m[3])
        if len(_stamps) >= PREFIX_CACHE:
            _stamps.clear()
        _stamps[key] = stamp
    if stamp is None:
        return None
    end = line.find("]: ", 16, 16 + MAX_SOURCE_CHARS) + 3
    if end < 3:
        return None
    key = line[16:end]
    try:
        source = _sources[key]
    except KeyError:  # once per host, tag and process id
        source = _source(key)
        if len(_sources) >= PREFIX_CACHE:
            _sources.clear()
        _sources[key] = source
    if source is None:
        return None
    if not source[1]:  # _NOT_OURS: no shapes to try
        return _FOREIGN
    q = _QUEUE_ID.match(line, end)
    if q is None:
        return source[0] + stamp + (None,), source[1], end
    qid = q[1]
    return source[0] + stamp + (None if qid == "NOQUEUE" else qid,), source[1], q.end()


def _source(text: str) -> _Source | None:
    """``host tag[pid]: `` as the head's first five fields and the shapes to try;
    :data:`_NOT_OURS` for a tag that is not Postfix's or Sendmail's; None if not that form."""
    m = _SOURCE.fullmatch(text)
    if m is None:
        return None
    host, tag, pid = m.groups()
    program = tag.rpartition("/")[2]
    ours = _shapes_of(tag, program)
    if ours is None:
        return _NOT_OURS
    mta, table = ours
    return (mta, program, tag, int(pid), host), table


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
    head: Head = (
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
    return new_record("unknown", *head, extra=(("text", line[m.end() :]),))
