"""The one event schema of smtp_policy (documented in docs/events.md).

Every adapter builds :class:`Event` values; only ``smtp_policy.emit`` turns them into JSON
lines. The fields below are a public contract: add fields, never rename or remove one, and bump
:data:`SCHEMA_VERSION` if their meaning ever has to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TypedDict

from smtp_policy.core.model import Explanation

SCHEMA_VERSION = 1


class Source(StrEnum):
    """Which part of smtp_policy saw the reply."""

    MILTER = "milter"
    MAPS = "maps"
    POLICY = "policy"
    LOG = "log"
    PROXY = "proxy"


class Direction(StrEnum):
    """Whose reply it is: ours to a client, or a remote server's to us."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


_EMPTY: Mapping[str, object] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, with the reply and its explanation when there is one."""

    event: str
    source: Source
    ts: datetime
    direction: Direction | None = None
    stage: str | None = None
    session: str | None = None
    queue_id: str | None = None
    client_addr: str | None = None
    client_name: str | None = None
    helo: str | None = None
    sender: str | None = None
    recipient: str | None = None
    code: int | None = None
    enhanced: str | None = None
    klass: str | None = None
    reason: str | None = None
    text: str | None = None
    friendly: str | None = None
    summary: str | None = None
    rule: str | None = None
    mta: str | None = None
    extra: Mapping[str, object] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None:
            raise ValueError("event timestamps must be timezone-aware")
        clash = set(self.extra) & FIELD_NAMES
        if clash:
            raise ValueError(f"extra keys shadow schema fields: {sorted(clash)}")

    def to_dict(self) -> dict[str, object]:
        """The JSON form: every schema field (null when unknown), then the extras."""
        out: dict[str, object] = {"schema": SCHEMA_VERSION}
        for name in _ORDER:
            value = getattr(self, name)
            if name == "ts":
                value = (
                    self.ts.astimezone(UTC)
                    .isoformat(timespec="microseconds")
                    .replace("+00:00", "Z")
                )
            out["class" if name == "klass" else name] = value
        out.update(self.extra)
        return out


class ReplyFields(TypedDict, total=False):
    """The event fields that describe a reply, for ``Event(**reply_fields(...))``."""

    code: int | None
    enhanced: str | None
    klass: str | None
    reason: str | None
    text: str | None
    summary: str | None
    rule: str | None


def reply_fields(explanation: Explanation | None, text: str | None = None) -> ReplyFields:
    """The fields of a reply and its explanation; ``text`` overrides the reply's raw text."""
    if explanation is None:
        return {"text": text}
    c = explanation.classification
    r = c.reply
    return {
        "code": r.code,
        "enhanced": str(r.enhanced) if r.enhanced else None,
        "klass": c.klass.value,
        "reason": c.reason.value if c.reason else None,
        "text": r.raw if text is None else text,
        "summary": explanation.summary,
        "rule": c.rule,
    }


_ORDER = tuple(f.name for f in fields(Event) if f.name != "extra")
#: The JSON names of the schema's fields (``klass`` is written as ``class``).
FIELD_NAMES = frozenset({"schema", *("class" if n == "klass" else n for n in _ORDER)})
