"""The follower's saved state: file positions, the journal cursor and the messages in flight,
one JSON document replaced atomically after every batch.

The document is created 0600 in a fresh temporary file and renamed into place (a link at the
path is replaced, never followed); it is read back only when it is a regular file of the
follower's own user (see :func:`smtp_policy.emit.open_own_file`), else the follower refuses to
start."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from datetime import tzinfo
from pathlib import Path
from typing import Any

from smtp_policy.adapters.follow.journal import JournalTail
from smtp_policy.adapters.follow.tail import FilePosition, FileTail, Tailer
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.policy import OwnReply
from smtp_policy.emit import UnsafeFileError, open_own_file
from smtp_policy.maillog.tracker import MessageTracker

#: The version of the state document; a state of another version is ignored.
STATE_VERSION = 1


class StateStore:
    """One JSON document in a state directory, replaced atomically on every save."""

    FILE = "follow-state.json"
    #: The mode of the state directory when the follower creates it.
    DIRECTORY_MODE = 0o700

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILE

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none; raise ValueError if it is unreadable,
        :class:`~smtp_policy.emit.UnsafeFileError` if it is not the follower's own file."""
        try:
            fd = open_own_file(str(self.path), os.O_RDONLY, 0o600, create=False)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read()
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: not a JSON object")
        return data

    def save(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` to a temporary file, flush it to disk, then rename it into place."""
        self.directory.mkdir(mode=self.DIRECTORY_MODE, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".follow-state.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def snapshot(tailer: Tailer, tracker: MessageTracker) -> dict[str, Any]:
    """Everything a restart needs: file positions, the journal cursor, messages in flight."""
    files: dict[str, object] = {}
    cursor = None
    for source in tailer.sources:
        if isinstance(source, FileTail) and source.position is not None:
            files[source.path] = source.position.to_dict()
        elif isinstance(source, JournalTail):
            cursor = source.cursor
    return {
        "version": STATE_VERSION,
        "files": files,
        "journal_cursor": cursor,
        "tracker": tracker.to_json(),
    }


def position_of(raw: object) -> FilePosition | None:
    """A saved file position, or None when ``raw`` is not one."""
    if not isinstance(raw, dict):
        return None
    try:
        return FilePosition.from_dict(raw)
    except (ValueError, TypeError, KeyError):
        return None


def load_state(store: StateStore | None) -> Mapping[str, Any]:
    """The saved state; an unreadable one is moved aside (and reported), not fatal. Raise
    ConfigError (one line, exit 1) when the path is a link or not the follower's own file."""
    if store is None:
        return {}
    try:
        state = store.load()
    except UnsafeFileError as exc:
        raise ConfigError([f"cannot use the state file {store.path}: {exc.strerror}"]) from None
    except (OSError, ValueError) as exc:
        print(f"smtp-policy follow: state {store.path} unreadable ({exc}); starting afresh",
              file=sys.stderr)  # fmt: skip
        with contextlib.suppress(OSError):
            os.replace(store.path, f"{store.path}.corrupt")
        return {}
    if state is None or state.get("version") != STATE_VERSION:
        return {}
    return state


def restore_tracker(
    state: Mapping[str, Any],
    kb: KnowledgeBase,
    *,
    max_idle: float,
    tz: tzinfo,
    year: int | None,
    own: Iterable[OwnReply] = (),
) -> MessageTracker:
    """The tracker with the messages in flight that ``state`` saved (a bad one is ignored);
    ``own`` are the replies of the configured rules, recognised in the log."""
    saved = state.get("tracker")
    own = tuple(own)
    if saved:
        try:
            return MessageTracker.from_json(saved, kb, max_idle=max_idle, tz=tz, year=year, own=own)
        except (ValueError, TypeError, KeyError) as exc:
            print(f"smtp-policy follow: in-flight state ignored: {exc}", file=sys.stderr)
    return MessageTracker(kb, max_idle=max_idle, tz=tz, year=year, own=own)
