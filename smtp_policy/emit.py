"""Write events as JSON Lines through structlog: the only place events are serialised."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TextIO

import structlog

from .core.events import Event, Source


class EventWriter:
    """Writes one JSON object per line; safe to share between threads (one lock per file)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._log = structlog.wrap_logger(
            structlog.WriteLogger(stream),
            processors=[structlog.processors.JSONRenderer(ensure_ascii=False)],
        )

    @classmethod
    def open(cls, path: str | None) -> EventWriter:
        """Events to ``path`` (appended, line-buffered), or to stdout when it is None or "-"."""
        if path is None or path == "-":
            return cls(sys.stdout)
        return cls(open(path, "a", encoding="utf-8", buffering=1))

    def emit(self, event: Event) -> None:
        """Write one event."""
        data = event.to_dict()
        name = data.pop("event")
        self._log.msg(name, **data)

    def error(self, source: Source, text: str, session: str | None = None) -> None:
        """Write an ``error`` event, stamped now: a problem a daemon handled and went on."""
        self.emit(
            Event(event="error", source=source, ts=datetime.now(UTC), session=session, text=text)
        )

    def close(self) -> None:
        """Close the file, unless it is stdout."""
        if self._stream is not sys.stdout:
            self._stream.close()
