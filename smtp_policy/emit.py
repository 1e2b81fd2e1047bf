"""Write events as JSON Lines through structlog: the only place events are serialised.

Each event is one JSON object (structlog's renderer here, :func:`_render`) written with one
``write`` call; the follower's writer is block-buffered, writes a batch's events with one call
(:meth:`EventWriter.emit_forms`, the same renderer) and is flushed per batch; a daemon's is
line-buffered, and the asyncio milter holds the events of each batch of the MTA's commands and
writes them with one call before it answers (:meth:`EventWriter.hold`).

Files a daemon writes (events, the follower's state) are opened by :func:`open_own_file`: never
through a symbolic link, only when they are regular files of the daemon's own user, so a local
user who can write to the directory cannot point a daemon running as root at another file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from smtp_policy.core.events import DETAIL_CAP, Event, EventKind, Source, capped
from smtp_policy.core.sanitize import json_safe

if TYPE_CHECKING:
    from structlog.typing import EventDict

# structlog's dev module imports rich when it is installed, for console renderers and pretty
# tracebacks this module never uses: 16 MB resident in every daemon and a tenth of a second
# of start-up. A None in sys.modules makes that ``import rich`` fail, which structlog expects
# (rich is optional); rich stays importable for anything that asks later.
_HIDE_RICH = "rich" not in sys.modules
if _HIDE_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment]
try:
    import structlog
finally:
    if _HIDE_RICH:
        del sys.modules["rich"]

#: The mode of a new events file, whatever the umask: the daemon writes, its group reads.
EVENTS_MODE = 0o640
_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


class UnsafeFileError(OSError):
    """A path a daemon was to write (or read back) is not a regular file of its own user."""


def open_own_file(path: str, flags: int, mode: int, *, create: bool = True) -> int:
    """A descriptor of ``path``, a regular file owned by this process's effective user.

    ``flags`` add to ``O_NOFOLLOW | O_CLOEXEC``: a symbolic link is refused, never followed.
    A file this call creates gets exactly ``mode``, whatever the umask. Raises
    :class:`UnsafeFileError` (its ``strerror`` says why in a few words) for a link, a file
    that is not regular, owned by another user or with another hard link; OSError otherwise.
    """
    created = False
    try:
        if create:
            try:
                fd = os.open(path, flags | _FLAGS | os.O_CREAT | os.O_EXCL, mode)
                created = True
            except FileExistsError:
                fd = os.open(path, flags | _FLAGS)
        else:
            fd = os.open(path, flags | _FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise UnsafeFileError(
                errno.ELOOP, "is a symbolic link (refused: never followed)", path
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO without a reader, a socket
            raise UnsafeFileError(exc.errno, "is not a regular file (refused)", path) from None
        raise
    try:
        _check_own(fd, path)
        if created:
            os.fchmod(fd, mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_own(fd: int, path: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(errno.EINVAL, "is not a regular file (refused)", path)
    if info.st_uid != os.geteuid():
        raise UnsafeFileError(
            errno.EPERM,
            f"is owned by uid {info.st_uid}, not by this daemon's user "
            f"(uid {os.geteuid()}) (refused)",
            path,
        )
    if info.st_nlink > 1:
        raise UnsafeFileError(
            errno.EPERM, f"has {info.st_nlink} hard links (refused: it may be another file)", path
        )


def _unknown_value(value: object) -> str:
    """A value JSON has no form for, as its capped ``repr``."""
    return capped(repr(value), DETAIL_CAP)


#: What orjson cannot write, by the stdlib encoder instead: the same compact JSON.
_ENCODE_STDLIB = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_unknown_value
).encode
#: Values orjson would write in forms of its own go to ``default`` (their ``repr``), as the
#: stdlib encoder sends them: events carry only JSON's own types.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _render(_logger: object, _method: str, fields: EventDict) -> str:
    """structlog's renderer: the fields as one compact JSON object (``event`` last, as
    structlog puts it), escaped as :func:`~smtp_policy.core.sanitize.json_text` escapes.

    orjson writes it (a tenth of the stdlib encoder's time); the rare event it refuses (a
    lone surrogate from undecodable bytes, an integer past 64 bits) goes through the stdlib
    encoder with the same separators, so every line has one form."""
    try:
        text = orjson.dumps(fields, default=_unknown_value, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        text = _ENCODE_STDLIB(fields)
    return json_safe(text)


class _Lines:
    """The logger structlog hands rendered events to: one ``write`` per line, flushed at once
    only when line-buffered (structlog's own loggers flush every line; the follower flushes
    once per batch), or kept in ``held`` while the writer holds its events."""

    __slots__ = ("held", "line_buffered", "stream")

    def __init__(self, stream: TextIO, line_buffered: bool) -> None:
        self.stream = stream
        self.line_buffered = line_buffered
        self.held: list[str] | None = None

    def msg(self, message: str) -> None:
        """Write one rendered event (or keep it, while held)."""
        held = self.held
        if held is not None:
            held.append(message)
            return
        self.stream.write(message + "\n")
        if self.line_buffered:  # stdout or a stream of a caller's: out at once, too
            self.stream.flush()

    info = msg  # structlog's bound logger calls its level's name


def _logger(lines: _Lines) -> Any:
    """structlog over ``lines``: one renderer, bound at once (a lazy proxy, even one cached
    on first use, costs an attribute lookup through ``__getattr__`` per event: about 3 µs)."""
    return structlog.wrap_logger(lines, processors=[_render]).bind()


def _append(path: str, line_buffered: bool) -> TextIO:
    buffering = 1 if line_buffered else -1
    if path == os.devnull:  # a sink a benchmark may name: nothing is written anywhere
        return open(path, "a", encoding="utf-8", buffering=buffering)
    fd = open_own_file(path, os.O_WRONLY | os.O_APPEND, EVENTS_MODE)
    return os.fdopen(fd, "a", encoding="utf-8", buffering=buffering)


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
        self._lines = _Lines(stream, line_buffered)
        self._log = _logger(self._lines)

    @classmethod
    def open(cls, path: str | None, *, line_buffered: bool = True) -> EventWriter:
        """Events to ``path`` (appended; missing directories are created, as [events] output
        promises), or to stdout when it is None or "-". A new file is created 0640; a path
        that is a symbolic link, not a regular file or not the daemon's user's own is refused
        (:class:`UnsafeFileError`, an OSError), at start and on :meth:`reopen` alike.

        Daemons write line-buffered; the follower buffers and calls :meth:`flush` per batch.
        """
        if path is None or path == "-":
            return cls(sys.stdout)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return cls(_append(path, line_buffered), path, line_buffered=line_buffered)

    def emit(self, event: Event) -> None:
        """Write one event."""
        fields = event.to_dict()
        name = fields.pop("event")
        with self._lock:
            self._log.msg(name, **fields)

    def emit_fields(self, fields: dict[str, object]) -> None:
        """Write one event given in its JSON form, as :meth:`Event.to_dict` or
        :func:`~smtp_policy.core.events.event_fields` builds it (taken over: changed here)."""
        name = fields.pop("event")
        with self._lock:
            self._log.msg(name, **fields)

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
            old, self._stream = self._stream, stream
            lines = _Lines(stream, self._line_buffered)
            lines.held, self._lines = self._lines.held, lines
            self._log = _logger(lines)
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

    def hold(self) -> None:
        """Keep the events emitted from now on until :meth:`release` (one thread's use: the
        asyncio milter holds the events of each batch of the MTA's commands, so that they go
        out in one write, before its replies do). Holding twice is holding once."""
        with self._lock:
            lines = self._lines
            if lines.held is None:
                lines.held = []

    def release(self) -> None:
        """Write the held events, in order, with one ``write`` (flushed), and stop holding."""
        with self._lock:  # an event another thread emits meanwhile is in ``held`` or after it
            lines = self._lines
            held, lines.held = lines.held, None
            if held:
                self._stream.write("\n".join(held) + "\n")
                self._stream.flush()

    def flush(self) -> None:
        """Write out what is buffered."""
        with self._lock:
            self._stream.flush()

    def close(self) -> None:
        """Close the file, unless it is stdout."""
        if self._stream is not sys.stdout:
            self._stream.close()

    def emit_forms(self, forms: Iterable[dict[str, object]]) -> None:
        """Write events given in their JSON form (as :meth:`Event.to_dict` builds it; taken
        over: changed here) in order with one ``write``, each line exactly as
        :meth:`emit_fields` writes it (structlog's per-call machinery skipped: the follower
        writes thousands of events per batch)."""
        render = _render
        lines = []
        for fields in forms:
            fields["event"] = fields.pop("event")  # last, where structlog puts it
            lines.append(render(None, "info", fields))
        if not lines:
            return
        lines.append("")
        with self._lock:
            self._stream.write("\n".join(lines))
            if self._line_buffered:
                self._stream.flush()
