"""Follow mail log files (rotation-safe, resumable) and streams (standard input, pipes).

Theory of operation: this module only moves lines. It never parses one (that is
``smtp_policy.maillog.parse``) and never decides what a line means.

A :class:`FileTail` reads one path in binary chunks and hands out complete lines only; a last
line without its newline stays in a buffer until the writer finishes it. Its *position* is
``(st_dev, st_ino, offset, head)``: the file's identity, the byte offset just after the last
complete line handed out, and a hash of the file's first line. The caller persists that
position after it has processed the lines, so a restart continues exactly there.

Before every read the tail checks the open file in place, and after a read that found no new
data it checks what is now at the path, like fail2ban's FileContainer:

- the same inode, but smaller than our offset: it was truncated (copytruncate); start at 0;
- the same inode, but another first line: it was truncated and has since grown past our
  offset; start at 0 (one ``pread`` of the first 4 KiB per poll, a few microseconds);
- in both cases, a sibling with the old first line and at least our offset's length is the
  copy copytruncate made: the lines we had not read yet when the file was truncated are read
  from it first (from our offset to its end), then the truncated file from 0;
- another inode at the path: the file was renamed away (rename-and-create rotation). The old
  file is read to its end first (a partial last line is finished there: nothing more will be
  written to it), then the new file is followed from offset 0.

On resume, a saved position whose inode is no longer at the path is looked up among the
path's siblings (``mail.log.1``); if found, that file is finished from the saved offset before
the new one is read, so lines written just before a rotation that happened while we were down
are not lost. A file truncated while we were down is finished from its copy the same way.
Bytes that are not UTF-8 are replaced (``errors="replace"``) and reported once per file. Lines
longer than :data:`MAX_LINE_BYTES` are cut, so binary garbage cannot grow the buffer without
bound.

:class:`StreamTail` reads a pipe or standard input without blocking (the journal's
``JournalTail``, in ``journal``, reads journalctl through one). Each is a :class:`LineSource`;
:class:`Tailer` polls them all and, when none has data, sleeps through an injected ``sleep`` so
that tests run in milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

#: Bytes read from a file per poll; also the most one source contributes to one batch.
CHUNK_BYTES = 1 << 20
#: A "line" longer than this is cut there (binary garbage must not grow the buffer forever).
MAX_LINE_BYTES = 64 * 1024
#: The first line is hashed from at most this many bytes.
HEAD_BYTES = 4096
#: Seconds to sleep when no source had anything to read.
POLL_INTERVAL = 0.25

Sleep = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class FilePosition:
    """Where a file was read up to: its identity, the offset after the last line, its head."""

    dev: int
    ino: int
    offset: int
    head: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON form kept in the state directory."""
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "head": self.head}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FilePosition:
        """Read :meth:`to_dict`'s output; raise ValueError/TypeError/KeyError on nonsense."""
        head = data.get("head")
        return cls(
            dev=int(data["dev"]),
            ino=int(data["ino"]),
            offset=int(data["offset"]),
            head=str(head) if head is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Notice:
    """Something an operator should know about a source (rotation, bad bytes, a missing file)."""

    source: str
    kind: str  # rotated | truncated | invalid_utf8 | missing | unreadable | journal_error | cut
    message: str


@dataclass(slots=True)
class Batch:
    """What one poll of one source produced: complete lines, and notices."""

    source: str
    lines: list[str] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


class LineSource(Protocol):
    """Anything the :class:`Tailer` can poll for lines: a file, a stream, the journal."""

    name: str

    def poll(self) -> Batch:
        """Read what is available now, without blocking for long."""
        ...

    @property
    def exhausted(self) -> bool:
        """True when the last poll found nothing left to read (end of file or stream)."""
        ...

    @property
    def ended(self) -> bool:
        """True when nothing can ever come again (a closed pipe; never for a file)."""
        ...

    def finish(self) -> Batch:
        """Hand out a held-back partial last line as a line (the input is over)."""
        ...

    def close(self) -> None:
        """Release the file or process."""
        ...


def head_hash(fd: int) -> str | None:
    """The hash of the first line of an open file, or None while that line is unfinished."""
    data = os.pread(fd, HEAD_BYTES, 0)
    end = data.find(b"\n")
    if end < 0 and len(data) < HEAD_BYTES:
        return None
    first = data if end < 0 else data[:end]
    return hashlib.blake2b(first, digest_size=12).hexdigest()


class LineSplitter:
    """Bytes in, complete decoded lines out; keeps the unfinished tail and warns once on bad UTF-8.

    ``consumed`` counts the bytes of every complete line handed out (newlines included), which
    is what a file position's offset advances by.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.buffer = b""
        self.consumed = 0
        self.warned = False

    def feed(self, data: bytes, batch: Batch) -> None:
        """Split ``data`` (after what is buffered) into ``batch.lines``."""
        data = self.buffer + data if self.buffer else data
        cut = data.rfind(b"\n")
        if cut < 0:
            self.buffer = data
            self._cut_overlong(batch)
            return
        self.buffer = data[cut + 1 :]
        self.consumed += cut + 1
        batch.lines.extend(self._decode(data[:cut], batch).split("\n"))
        self._cut_overlong(batch)

    def finish(self, batch: Batch) -> None:
        """The input is over: a partial last line becomes a line."""
        if self.buffer:
            self.consumed += len(self.buffer)
            batch.lines.append(self._decode(self.buffer, batch))
            self.buffer = b""

    def reset(self) -> None:
        """Forget the partial line (the file it came from was truncated or replaced)."""
        self.buffer = b""
        self.warned = False

    def _cut_overlong(self, batch: Batch) -> None:
        while len(self.buffer) > MAX_LINE_BYTES:
            piece, self.buffer = self.buffer[:MAX_LINE_BYTES], self.buffer[MAX_LINE_BYTES:]
            self.consumed += len(piece)
            batch.lines.append(self._decode(piece, batch))
            batch.notices.append(
                Notice(self.source, "cut", f"a line longer than {MAX_LINE_BYTES} bytes was cut")
            )

    def _decode(self, data: bytes, batch: Batch) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not self.warned:
                self.warned = True
                batch.notices.append(
                    Notice(
                        self.source,
                        "invalid_utf8",
                        f"bytes that are not UTF-8 were replaced (first at byte {exc.start} "
                        "of a chunk); further occurrences in this file are not reported",
                    )
                )
            return data.decode("utf-8", "replace")


class FileTail:
    """Follow one log file across rotation and truncation; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        position: FilePosition | None = None,
        from_start: bool = False,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.path = os.fspath(path)
        self.name = self.path
        self._saved = position
        self._from_start = from_start
        self._chunk = chunk_bytes
        self._fh: IO[bytes] | None = None
        self._dev = self._ino = 0
        self._base = 0  # offset of the splitter's byte 0 in the current file
        self._head: str | None = None
        self._split = LineSplitter(self.path)
        self._exhausted = False
        self._reported: set[str] = set()
        self._started = False

    @property
    def position(self) -> FilePosition | None:
        """Where the next run should continue (None before the file was ever opened)."""
        if self._fh is None:
            return self._saved
        return FilePosition(self._dev, self._ino, self._base + self._split.consumed, self._head)

    @property
    def exhausted(self) -> bool:
        """True when the last poll found no new data and nothing to switch to."""
        return self._exhausted

    @property
    def ended(self) -> bool:
        """A file may always grow: never."""
        return False

    def poll(self) -> Batch:
        """Read up to one chunk of new lines, or handle rotation/truncation at the end."""
        batch = Batch(self.name)
        if self._fh is None and not self._open(batch):
            self._exhausted = True
            return batch
        assert self._fh is not None
        self._check_in_place(batch)
        data = self._fh.read(self._chunk)
        if data:
            self._exhausted = False
            self._split.feed(data, batch)
            return batch
        self._exhausted = not self._at_end(batch)
        return batch

    def finish(self) -> Batch:
        """Hand out the held-back partial last line, if any."""
        batch = Batch(self.name)
        self._split.finish(batch)
        return batch

    def close(self) -> None:
        """Close the file; the position stays available."""
        if self._fh is not None:
            self._saved = self.position
            self._fh.close()
            self._fh = None

    # -- opening ----------------------------------------------------------------------------

    def _open(self, batch: Batch) -> bool:
        first = not self._started
        fh = self._open_path(self.path, batch)
        if fh is None:
            self._started = True  # a file that appears later is new: read it from its start
            return False
        st = os.fstat(fh.fileno())
        saved, self._saved = self._saved, None
        self._started = True
        if saved is not None and (st.st_dev, st.st_ino) != (saved.dev, saved.ino):
            old = self._find_rotated(saved)
            if old is not None:
                fh.close()
                return self._resume(old, saved, batch)
        if saved is not None and (st.st_dev, st.st_ino) == (saved.dev, saved.ino):
            return self._resume(fh, saved, batch)
        at_end = first and saved is None and not self._from_start
        self._attach(fh, _end_of_last_line(fh.fileno(), st.st_size) if at_end else 0)
        return True

    def _open_path(self, path: str, batch: Batch) -> IO[bytes] | None:
        try:
            fh = open(path, "rb", buffering=0)  # noqa: SIM115 - kept open across polls
        except FileNotFoundError:
            self._report_once(batch, "missing", f"{path} does not exist (yet)")
            return None
        except OSError as exc:
            self._report_once(batch, "unreadable", f"cannot read {path}: {exc.strerror}")
            return None
        if not os.path.isfile(path):
            fh.close()
            self._report_once(batch, "unreadable", f"{path} is not a regular file")
            return None
        self._reported.clear()
        return fh

    def _resume(self, fh: IO[bytes], saved: FilePosition, batch: Batch) -> bool:
        st = os.fstat(fh.fileno())
        head = head_hash(fh.fileno())
        if st.st_size < saved.offset or (saved.head is not None and head != saved.head):
            batch.notices.append(
                Notice(self.name, "truncated", "the file changed while we were stopped")
            )
            copy = self._find_copy(saved.head, saved.offset, (st.st_dev, st.st_ino))
            if copy is not None:  # copytruncate: the rest is in the copy, then the path
                fh.close()
                self._attach(copy, saved.offset)
            else:
                self._attach(fh, 0)
        else:
            self._attach(fh, saved.offset)
        return True

    def _attach(self, fh: IO[bytes], offset: int) -> None:
        if self._fh is not None and self._fh is not fh:
            self._fh.close()
        st = os.fstat(fh.fileno())
        fh.seek(offset)
        self._fh, self._dev, self._ino = fh, st.st_dev, st.st_ino
        self._base = offset
        self._split.reset()
        self._split.consumed = 0
        self._head = head_hash(fh.fileno())

    def _find_copy(
        self, head: str | None, offset: int, exclude: tuple[int, int]
    ) -> IO[bytes] | None:
        """The copy a copytruncate rotation made of the file we were reading: a sibling
        (``mail.log.1``) with the same first line and at least ``offset`` bytes; the newest
        if several match. Compressed copies cannot match (use logrotate's delaycompress)."""
        if head is None:
            return None
        folder, base = os.path.split(self.path)
        candidates = []
        with contextlib.suppress(OSError), os.scandir(folder or ".") as entries:
            for entry in entries:
                if not entry.name.startswith(base) or entry.name == base:
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if (
                        stat.S_ISREG(st.st_mode)
                        and st.st_size >= offset
                        and (st.st_dev, st.st_ino) != exclude
                    ):
                        candidates.append((st.st_mtime_ns, entry.path))
        for _, path in sorted(candidates, reverse=True):
            try:
                fh = open(path, "rb", buffering=0)  # noqa: SIM115 - handed to _attach
            except OSError:
                continue
            if head_hash(fh.fileno()) == head:
                return fh
            fh.close()
        return None

    def _find_rotated(self, saved: FilePosition) -> IO[bytes] | None:
        folder, base = os.path.split(self.path)
        with contextlib.suppress(OSError), os.scandir(folder or ".") as entries:
            for entry in entries:
                if not entry.name.startswith(base) or entry.name == base:
                    continue
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (saved.dev, saved.ino):
                    with contextlib.suppress(OSError):
                        return open(entry.path, "rb", buffering=0)
        return None

    # -- at the end of the data ------------------------------------------------------------

    def _at_end(self, batch: Batch) -> bool:
        """Check rotation and truncation; True if there is something new to read."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # renamed away and not yet recreated: keep the old file
        if (st.st_dev, st.st_ino) != (self._dev, self._ino):
            self._switch(batch)
            return True
        return False

    def _check_in_place(self, batch: Batch) -> bool:
        """Before each read: truncated (smaller than our offset) or another first line?"""
        assert self._fh is not None
        fd = self._fh.fileno()
        size = os.fstat(fd).st_size
        head = head_hash(fd)
        offset = self._base + self._split.consumed
        if size < offset or (self._head is not None and head != self._head):
            batch.notices.append(Notice(self.name, "truncated", "the file was truncated"))
            copy = self._find_copy(self._head, offset, (self._dev, self._ino))
            if copy is not None:
                # copytruncate: lines we had not read yet are in the copy. Read it from our
                # offset; at its end _at_end sees another inode at the path and switches.
                self._attach(copy, offset)
            else:
                self._attach(self._fh, 0)
            return True
        self._head = head
        return False

    def _switch(self, batch: Batch) -> None:
        """Finish the renamed-away file, then follow the new one from its start."""
        assert self._fh is not None
        while data := self._fh.read(self._chunk):
            self._split.feed(data, batch)
        self._split.finish(batch)
        fh = self._open_path(self.path, batch)
        if fh is None:
            return
        batch.notices.append(
            Notice(self.name, "rotated", "the file was rotated; following the new one")
        )
        self._attach(fh, 0)

    def _report_once(self, batch: Batch, kind: str, message: str) -> None:
        if kind not in self._reported:
            self._reported.add(kind)
            batch.notices.append(Notice(self.name, kind, message))


def _end_of_last_line(fd: int, size: int) -> int:
    """The offset just after the last newline (where following "from the end" starts)."""
    start = max(0, size - MAX_LINE_BYTES)
    tail = os.pread(fd, size - start, start)
    cut = tail.rfind(b"\n")
    return start + cut + 1 if cut >= 0 else start


class StreamTail:
    """Lines from a pipe or standard input, read without blocking."""

    def __init__(self, stream: IO[bytes], name: str = "-", chunk_bytes: int = CHUNK_BYTES) -> None:
        self.name = name
        self._stream = stream
        self._fd = stream.fileno()
        self._chunk = chunk_bytes
        self._split = LineSplitter(name)
        self._closed = False

    @property
    def exhausted(self) -> bool:
        """True once the stream has ended."""
        return self._closed

    @property
    def ended(self) -> bool:
        """True once the stream has ended."""
        return self._closed

    def poll(self) -> Batch:
        """Read what the pipe holds now; at its end, the partial last line becomes a line."""
        batch = Batch(self.name)
        if self._closed:
            return batch
        ready, _, _ = select.select([self._fd], [], [], 0)
        if not ready:
            return batch
        try:
            data = os.read(self._fd, self._chunk)
        except OSError as exc:
            batch.notices.append(Notice(self.name, "unreadable", f"read failed: {exc.strerror}"))
            data = b""
        if not data:
            self._closed = True
            self._split.finish(batch)
            return batch
        self._split.feed(data, batch)
        return batch

    def finish(self) -> Batch:
        """Hand out the held-back partial last line, if any."""
        batch = Batch(self.name)
        self._split.finish(batch)
        return batch

    def close(self) -> None:
        """Nothing to release: the stream belongs to the caller."""


class Tailer:
    """Poll several sources; sleep (injected) when none of them had anything."""

    def __init__(
        self,
        sources: Sequence[LineSource],
        *,
        sleep: Sleep = time.sleep,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.sources = list(sources)
        self._sleep = sleep
        self._interval = poll_interval

    def poll(self) -> list[Batch]:
        """One round over every source; the batches that carry lines or notices."""
        out = []
        for source in self.sources:
            batch = source.poll()
            if batch.lines or batch.notices:
                out.append(batch)
        return out

    @property
    def exhausted(self) -> bool:
        """True when every source is at its end."""
        return all(s.exhausted for s in self.sources)

    def batches(self, stop: Callable[[], bool], *, once: bool = False) -> Iterator[list[Batch]]:
        """Yield rounds of batches until ``stop()`` is true, every source has ended (closed
        pipes), or, with ``once``, every source is at its end.

        An empty round means nothing was read; the caller may use it to do periodic work.
        """
        while not stop():
            round_ = self.poll()
            if round_:
                yield round_
                continue
            if (once and self.exhausted) or all(s.ended for s in self.sources):
                return
            yield []
            if not stop():
                self._sleep(self._interval)

    def finish(self) -> list[Batch]:
        """The held-back partial lines of every source, as lines (the input is over)."""
        return [b for b in (s.finish() for s in self.sources) if b.lines]

    def close(self) -> None:
        """Close every source."""
        for source in self.sources:
            source.close()
