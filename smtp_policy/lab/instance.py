"""What every private MTA lab shares: free ports, polling, and reading a lab's log,
mailboxes, queue and delivery reports."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage, Message
from pathlib import Path
from typing import TypeVar

_POLL = 0.05
T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """Something a test waited for (a log line, mail, an empty queue) did not happen in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(
    probe: Callable[[], T | None],
    timeout: float,
    what: Callable[[], str],
    *,
    unless: Callable[[], bool] | None = None,
    interval: float = _POLL,
) -> T:
    """Call ``probe`` every ``interval`` s until it returns non-None; raise WaitTimeoutError
    after ``timeout`` s. ``unless``: give up at once (AssertionError) when it holds and one more
    call of ``probe`` still returns None (what it waits for can no longer happen)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if unless is not None and unless():
            result = probe()
            if result is not None:
                return result
            raise AssertionError(f"gave up waiting for {what()}")
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(f"timed out after {timeout:g}s waiting for {what()}")
        time.sleep(interval)


class MailLab:
    """What the Postfix and Sendmail labs share: reading their log, mailboxes and queue.

    A subclass names its ``maillog`` and implements :meth:`mailbox` and :meth:`queue_files`.
    """

    @property
    def maillog(self) -> Path:
        """The instance's mail log (raises RuntimeError before it exists)."""
        raise NotImplementedError

    def mailbox(self, user: str) -> list[EmailMessage]:
        """The messages delivered to local ``user``, oldest first."""
        raise NotImplementedError

    def queue_files(self) -> list[Path]:
        """The files of every queued message."""
        raise NotImplementedError

    def maillog_lines(self) -> list[str]:
        """All lines of the instance's maillog so far."""
        try:
            return self.maillog.read_text(errors="replace").splitlines()
        except (FileNotFoundError, RuntimeError):  # not started yet
            return []

    def log_matches(self, pattern: str | re.Pattern[str], *, since: int = 0) -> list[str]:
        """Maillog lines (from line index ``since`` on) in which ``pattern`` is found."""
        regex = re.compile(pattern)
        return [line for line in self.maillog_lines()[since:] if regex.search(line)]

    def wait_for_log(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 30.0,
        *,
        count: int = 1,
        since: int = 0,
    ) -> list[str]:
        """Poll the maillog until ``count`` lines match ``pattern`` (``re.search``); return all.

        ``since`` skips earlier lines (take ``len(pf.maillog_lines())`` as a mark).
        """

        def probe() -> list[str] | None:
            found = self.log_matches(pattern, since=since)
            return found if len(found) >= count else None

        return poll(probe, timeout, lambda: f"{count} x /{pattern}/ in the maillog{self._tail()}")

    def wait_for_mail(
        self,
        user: str,
        count: int = 1,
        timeout: float = 30.0,
        *,
        match: Callable[[EmailMessage], bool] | None = None,
    ) -> list[EmailMessage]:
        """Poll ``user``'s Maildir until it holds ``count`` messages (that ``match``)."""

        def probe() -> list[EmailMessage] | None:
            found = [m for m in self.mailbox(user) if match is None or match(m)]
            return found if len(found) >= count else None

        return poll(probe, timeout, lambda: f"{count} message(s) for {user}{self._tail()}")

    def queue_empty(self) -> bool:
        """Whether no message is queued (including deferred and held mail)."""
        return not self.queue_files()

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        """Poll until the queue is empty."""
        poll(
            lambda: True if self.queue_empty() else None,
            timeout,
            lambda: f"an empty queue; left: {[f.name for f in self.queue_files()]}{self._tail()}",
        )

    def _tail(self, n: int = 25) -> str:
        """The last ``n`` maillog lines, indented, for error messages."""
        lines = self.maillog_lines()[-n:]
        return "\n--- maillog tail ---\n" + "\n".join(lines) if lines else "\n(maillog empty)"


@dataclass(frozen=True)
class DeliveryReport:
    """The ``message/delivery-status`` part of a DSN, whitespace in values collapsed.

    TRAP: Postfix folds long fields (``Diagnostic-Code``) at 79 columns with 4-space indents,
    and unfolding keeps those spaces, so values are stored as ``" ".join(value.split())``.
    """

    message: dict[str, str]  #: per-message fields: Reporting-MTA, X-Postfix-Queue-ID, ...
    recipients: list[dict[str, str]]  #: per-recipient fields: Final-Recipient, Action, Status...


def delivery_report(msg: EmailMessage) -> DeliveryReport | None:
    """The delivery report in a bounce/delay/success notice, or None if ``msg`` has none."""
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            blocks = part.get_payload()
            if not isinstance(blocks, list):
                continue
            fields = [
                {k: " ".join(str(v).split()) for k, v in b.items()}
                for b in blocks
                if isinstance(b, Message)
            ]
            return DeliveryReport(message=fields[0], recipients=fields[1:])
    return None
