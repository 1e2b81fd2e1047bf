"""Whole mail logs as admins hand them to pflogsumm: files, ``-``, pipes, rotated archives.

:func:`read_lines` reads one input to its end: ``-`` is standard input; anything else is opened
as given, so a named pipe or a process substitution (``<(zcat mail.log.2.gz)``) works as well
as a file. Compressed inputs are recognised by their first bytes (gzip, bzip2, xz), whatever
their name. Problems become :class:`~smtp_policy.adapters.follow.tail.Notice` values, never an
exception: a missing or unreadable input (``unreadable``), a truncated or corrupt archive
(``corrupt``: the lines before the damage are kept).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

from smtp_policy.adapters.follow.tail import CHUNK_BYTES, Batch, LineSplitter, Notice


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


#: First bytes of the compressed formats logrotate writes, and how to open each.
_MAGIC: tuple[tuple[bytes, str, Callable[[Any], _Reader]], ...] = (
    (b"\x1f\x8b", "gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"BZh", "bzip2", lambda raw: bz2.BZ2File(raw, mode="rb")),
    (b"\xfd7zXZ\x00", "xz", lambda raw: lzma.LZMAFile(raw, mode="rb")),  # noqa: SIM115
)
_DAMAGE = (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)

#: Called with the number of (compressed) bytes read, for a progress line.
Progress = Callable[[int], None]


def read_lines(
    path: str, notices: list[Notice], progress: Progress | None = None
) -> Iterator[list[str]]:
    """The lines of one input, in chunks; problems are appended to ``notices``."""
    name = "standard input" if path == "-" else path
    try:
        raw: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        notices.append(Notice(path, "unreadable", f"cannot read {name}: {exc.strerror}"))
        return
    try:
        if path != "-" and os.path.isdir(path):
            notices.append(Notice(path, "unreadable", f"cannot read {name}: a directory"))
            return
        yield from _lines(_Counting(raw, progress), path, name, notices)
    finally:
        if path != "-":
            raw.close()


def _lines(raw: _Counting, path: str, name: str, notices: list[Notice]) -> Iterator[list[str]]:
    split = LineSplitter(path)
    try:
        head = raw.peek()
        stream: _Reader = raw
        kind = ""
        for magic, kind_name, opener in _MAGIC:
            if head.startswith(magic):
                stream, kind = opener(raw), kind_name
                break
        # read1: what decompresses before damage is kept, not lost with the failing chunk
        read = getattr(stream, "read1", stream.read)
        while True:
            batch = Batch(path)
            try:
                data = read(CHUNK_BYTES)
            except _DAMAGE as exc:
                what = f"{kind} archive" if kind else "input"
                notices.append(
                    Notice(path, "corrupt", f"{name}: damaged {what}, read up to there ({exc})")
                )
                data = b""
            if not data:
                split.finish(batch)
            else:
                split.feed(data, batch)
            notices += batch.notices
            if batch.lines:
                yield batch.lines
            if not data:
                return
    except OSError as exc:
        notices.append(Notice(path, "unreadable", f"cannot read {name}: {exc.strerror or exc}"))


class _Counting:
    """A binary stream that reports the bytes read and lets its first bytes be peeked at."""

    def __init__(self, raw: IO[bytes], progress: Progress | None) -> None:
        self._raw = raw
        self._progress = progress
        self._ahead = b""

    def peek(self) -> bytes:
        """The first bytes (kept for the next read)."""
        if not self._ahead:
            self._ahead = self._read(6)
        return self._ahead

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (peeked bytes first)."""
        if self._ahead:
            cut = len(self._ahead) if size < 0 else size
            data, self._ahead = self._ahead[:cut], self._ahead[cut:]
            return data
        return self._read(size)

    def _read(self, size: int) -> bytes:
        data = self._raw.read(size)
        if self._progress is not None and data:
            self._progress(len(data))
        return data

    def readable(self) -> bool:
        """Always: this is an input."""
        return True

    def close(self) -> None:
        """Closing is left to the owner of the underlying stream."""

    @property
    def closed(self) -> bool:
        """Never closed here."""
        return False
