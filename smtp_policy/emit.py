"""Write events as JSON Lines through structlog: the only place events are serialised."""

from __future__ import annotations

import os
import sys
import threading
from datetime import UTC, datetime
from typing import TextIO

import structlog

from smtp_policy.core.events import Event, EventKind, Source


def _logger(stream: TextIO) -> structlog.typing.FilteringBoundLogger:
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        structlog.WriteLogger(stream),
        processors=[structlog.processors.JSONRenderer(ensure_ascii=False)],
    )


def _append(path: str, line_buffered: bool) -> TextIO:
    return open(path, "a", encoding="utf-8", buffering=1 if line_buffered else -1)


class EventWriter:
    """Writes one JSON object per line; safe to share between threads.

    A writer opened on a path can :meth:`reopen` it, so ``logrotate`` may rename the file and
    signal the daemon (SIGHUP) instead of using ``copytruncate``.
    """

    def __init__(
        self, stream: TextIO, path: str | None = None, *, line_buffered: bool = True
    ) -> None:
        self._stream = stream
        self._path = path
        self._line_buffered = line_buffered
        self._lock = threading.Lock()
        self._log = _logger(stream)

    @classmethod
    def open(cls, path: str | None, *, line_buffered: bool = True) -> EventWriter:
        """Events to ``path`` (appended; missing directories are created, as [events] output
        promises), or to stdout when it is None or "-".

        Daemons write line-buffered; the follower buffers and calls :meth:`flush` per batch.
        """
        if path is None or path == "-":
            return cls(sys.stdout)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return cls(_append(path, line_buffered), path, line_buffered=line_buffered)

    def emit(self, event: Event) -> None:
        """Write one event."""
        data = event.to_dict()
        name = str(data.pop("event"))
        with self._lock:
            self._log.msg(name, **data)

    def reopen(self, source: Source) -> None:
        """Open the path again (after a rotation); on failure keep the old file and say why."""
        if self._path is None:
            return
        try:
            stream = _append(self._path, self._line_buffered)
        except OSError as exc:
            self.error(source, f"cannot reopen {self._path}: {exc.strerror}; still writing there")
            return
        with self._lock:
            old, self._stream, self._log = self._stream, stream, _logger(stream)
        old.close()

    def error(self, source: Source, text: str, session: str | None = None) -> None:
        """Write an ``error`` event, stamped now: a problem a daemon handled and went on."""
        self.emit(
            Event(
                event=EventKind.ERROR,
                source=source,
                ts=datetime.now(UTC),
                session=session,
                text=text,
            )
        )

    def flush(self) -> None:
        """Write out what is buffered."""
        with self._lock:
            self._stream.flush()

    def close(self) -> None:
        """Close the file, unless it is stdout."""
        if self._stream is not sys.stdout:
            self._stream.close()
