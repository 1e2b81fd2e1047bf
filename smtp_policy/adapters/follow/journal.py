"""Follow the systemd journal: ``journalctl -o json`` entries as syslog-like lines.

:class:`JournalTail` runs journalctl (with ``-f`` unless it is to stop at the end), turns each
JSON entry into ``<RFC 3339 time> <host> <ident>[<pid>]: <message>`` for the same parser as the
files, and remembers the cursor of the last entry so that a restart continues after it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from smtp_policy.adapters.follow.tail import Batch, Notice, StreamTail


def journal_command(
    unit: str | None, cursor: str | None, *, follow: bool, from_start: bool
) -> list[str]:
    """The journalctl command line for a unit (None: the whole journal)."""
    cmd = ["journalctl", "-o", "json", "--no-pager"]
    if follow:
        cmd.append("-f")
    if cursor:
        cmd += ["--after-cursor", cursor]
    elif from_start:
        cmd.append("--no-tail")
    else:
        cmd += ["--lines", "0"]
    if unit:
        cmd += ["-u", unit]
    return cmd


def journal_line(entry: Mapping[str, Any]) -> str:
    """A journal entry as a syslog line: ``<RFC 3339 time> <host> <ident>[<pid>]: <message>``."""
    message = _journal_text(entry.get("MESSAGE"))
    ident = _journal_text(entry.get("SYSLOG_IDENTIFIER")) or "unknown"
    pid = _journal_text(entry.get("SYSLOG_PID") or entry.get("_PID"))
    host = _journal_text(entry.get("_HOSTNAME")) or "localhost"
    try:
        micros = int(str(entry.get("__REALTIME_TIMESTAMP")))
        when = datetime.fromtimestamp(micros / 1_000_000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        when = datetime.fromtimestamp(0, UTC)
    stamp = when.isoformat(timespec="microseconds")
    tag = f"{ident}[{pid}]" if pid else ident
    return f"{stamp} {host} {tag}: {message}"


def _journal_text(value: object) -> str:
    """journalctl writes non-UTF-8 fields as arrays of byte values."""
    if value is None:
        return ""
    if isinstance(value, list):
        try:
            return bytes(int(b) & 0xFF for b in value).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return ""
    return str(value).replace("\n", " ")


class JournalTail:
    """Follow the systemd journal through ``journalctl -o json``, keeping the cursor."""

    def __init__(
        self,
        unit: str | None,
        cursor: str | None = None,
        *,
        follow: bool = True,
        from_start: bool = False,
        spawn: Callable[[list[str]], subprocess.Popen[bytes]] | None = None,
    ) -> None:
        self.name = "journal"
        self.cursor = cursor
        self.command = journal_command(unit, cursor, follow=follow, from_start=from_start)
        self._spawn = spawn or _spawn_journalctl
        self._proc: subprocess.Popen[bytes] | None = None
        self._stream: StreamTail | None = None
        self._failed = False
        self._reported_end = False

    @property
    def exhausted(self) -> bool:
        """True once journalctl has ended (only without ``-f``, or on an error)."""
        return self._failed or (self._stream is not None and self._stream.exhausted)

    @property
    def ended(self) -> bool:
        """True once journalctl has ended."""
        return self.exhausted

    def poll(self) -> Batch:
        """Read the entries journalctl has written; each becomes one syslog-like line."""
        batch = Batch(self.name)
        if self._failed:
            return batch
        if self._stream is None and not self._start(batch):
            return batch
        assert self._stream is not None
        raw = self._stream.poll()
        batch.notices += raw.notices
        for text in raw.lines:
            self._add(text, batch)
        if self._stream.exhausted and not self._reported_end:
            self._reported_end = True
            self._report_exit(batch)
        return batch

    def _report_exit(self, batch: Batch) -> None:
        assert self._proc is not None
        status = self._proc.wait()
        if status != 0:
            batch.notices.append(
                Notice(self.name, "journal_error", f"journalctl exited with status {status}")
            )

    def finish(self) -> Batch:
        """Entries are whole JSON lines: nothing is held back that could be completed."""
        return Batch(self.name)

    def close(self) -> None:
        """Stop journalctl."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def _start(self, batch: Batch) -> bool:
        try:
            self._proc = self._spawn(self.command)
        except OSError as exc:
            self._failed = True
            batch.notices.append(
                Notice(self.name, "journal_error", f"cannot run journalctl: {exc.strerror}")
            )
            return False
        assert self._proc.stdout is not None
        self._stream = StreamTail(self._proc.stdout, self.name)
        return True

    def _add(self, text: str, batch: Batch) -> None:
        if not text.strip():
            return
        try:
            entry = json.loads(text)
        except ValueError:
            batch.notices.append(Notice(self.name, "journal_error", "an entry was not JSON"))
            return
        if not isinstance(entry, dict):
            return
        batch.lines.append(journal_line(entry))
        cursor = entry.get("__CURSOR")
        if isinstance(cursor, str):
            self.cursor = cursor


def _spawn_journalctl(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
