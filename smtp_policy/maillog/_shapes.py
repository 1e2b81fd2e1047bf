"""What the Postfix and Sendmail line shapes share: the shape itself, its decorator, a line's
record head, reply codes and command stages."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeAlias

from smtp_policy.core.stages import Stage, stage_of
from smtp_policy.maillog.record import LogRecord, Mta

#: The fields every record of one line shares: mta, program, service_name, pid, host,
#: timestamp, parsed_time, month, day, clock, queue_id (in :class:`LogRecord` order).
Head: TypeAlias = tuple[
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

#: A builder: the body's match, the whole line and its head in, the record out.
Build: TypeAlias = Callable[["re.Match[str]", str, Head], LogRecord]


@dataclass(frozen=True, slots=True)
class Shape:
    """One line shape: its name, its regex (anchored at the body), a builder and a real sample."""

    name: str
    regex: re.Pattern[str]
    build: Build
    sample: str


def shape(name: str, pattern: str, sample: str) -> Callable[[Build], Shape]:
    """Decorator: turn a builder function into a :class:`Shape`."""

    def wrap(build: Build) -> Shape:
        return Shape(name, re.compile(pattern), build, sample)

    return wrap


#: A reply's 3-digit and enhanced codes, if present, at the reply's start.
CODES: Final = (
    r"(?:(?P<code>[2-5]\d\d)(?:[ \-,]|\Z))?(?:(?P<esc>[2-5]\.\d{1,3}\.\d{1,3})(?![\d.]))?"
)
LEADING_CODES: Final = re.compile(CODES)


def reply_codes(line: str, pos: int) -> tuple[int | None, str | None]:
    """The 3-digit and enhanced codes of the reply starting at ``line[pos]``."""
    m = LEADING_CODES.match(line, pos)
    if m is None:  # pragma: no cover - the pattern matches the empty string
        return None, None
    code, esc = m.groups()
    return (int(code) if code else None), esc


def command_stage(command: str) -> str:
    """A logged SMTP command as a record's stage: its :class:`Stage` (``END-OF-MESSAGE`` is
    ``eom``, ``BDAT`` is ``data``), else the command lowercased (``vrfy``, ``etrn``, ``quit``).

    The greetings keep their own names (``ehlo``, ``lhlo``): a record says which one the client
    sent; the tracker counts them all as the helo stage.
    """
    name = command.lower()
    stage = stage_of(name)
    return name if stage is None or stage is Stage.HELO else stage
