"""What one mail log line says: :class:`LogRecord`, its kinds, and the fast way to build one.

A frozen dataclass spends most of its construction time in ``object.__setattr__`` (33 fields,
~6x a plain slotted class), so the line shapes build records with :data:`new_record`: a
non-frozen twin with the same slots whose ``__post_init__`` switches the instance's class to
:class:`LogRecord`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from datetime import datetime, tzinfo
from typing import Any, Final, Literal, TypeAlias

__all__ = ["KINDS", "Direction", "LogRecord", "Mta", "new_record"]

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
    "pickup",
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


#: ``new_record(kind, *head, **fields)`` builds a :class:`LogRecord` without paying for a frozen
#: dataclass's ``object.__setattr__`` per field (33 of them).
new_record: Final = _draft_class()
