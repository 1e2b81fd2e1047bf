"""The grand totals of a mail log, each thing counted once (pure: events in, numbers out).

The one definition of "how many" that ``report``, ``trace`` and the metrics share, in
pflogsumm's terms where they mean the same:

- *received*: messages that came in through smtpd (a ``client=`` line) or pickup, or that
  Sendmail logged a ``from=`` line for (:func:`counted_as`: a queue id and a client, as
  pflogsumm counts); a bounce or delay notice the MTA generated itself is *generated*, not
  received. A message refused at DATA or END-OF-MESSAGE was received (and rejected), as
  pflogsumm counts it;
- *delivered*, *bounced*: per-recipient ``status=sent``/``bounced`` lines; *discarded_delivered*
  says how many of the delivered went to Postfix's discard transport;
- *deferred*: messages deferred at least once; *deferrals*: ``status=deferred`` lines. The
  lines that only describe a step of an attempt (``connect to ...: Connection refused``, a
  non-final MX's reply: reply events with ``detail``) are not counted: their outcome is;
- *rejected*, *reject_warnings*, *held*, *discarded*: the MTA's (or a milter's, or a
  before-queue filter's) actions on clients, per line, including milter rejects at RCPT;
- *expired*: messages returned after the maximal queue lifetime.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal, Protocol

from smtp_policy.core.events import Direction, Event, EventKind
from smtp_policy.maillog.tracker import FINISHED_MEMORY

__all__ = ["TOTALS", "DistinctMessages", "Tally", "counted_as"]

#: The keys of :meth:`Tally.totals`, in order.
TOTALS = (
    "received",
    "generated",
    "delivered",
    "discarded_delivered",
    "deferred",
    "deferrals",
    "bounced",
    "rejected",
    "reject_warnings",
    "held",
    "discarded",
    "expired",
)
_RECEIVED_ORIGINS = frozenset({"smtpd", "pickup", "sendmail"})
_ACTIONS = {
    "reject": "rejected",
    "tempfail": "rejected",
    "reject_warning": "reject_warnings",
    "hold": "held",
    "quarantine": "held",
    "discard": "discarded",
}


class Origin(Protocol):
    """Anything that says how a message came in: a record, or the tracker's finished message."""

    @property
    def origin(self) -> str | None:
        """``smtpd``, ``pickup``, ``sendmail``, ``notice`` or None."""


def counted_as(record: Origin) -> Literal["received", "generated"] | None:
    """How a message record counts: ``received`` (it came from a client, smtpd's ``client=``,
    pickup or Sendmail's ``from=``: a queue id and a client, as pflogsumm counts; refused
    later or not), ``generated`` (a notice this MTA wrote), or None (the log did not say how
    it came in)."""
    origin = record.origin
    if origin == "notice":
        return "generated"
    if origin in _RECEIVED_ORIGINS:
        return "received"
    return None


@dataclass(slots=True)
class DistinctMessages:
    """How many distinct messages (queue ids) something happened to, in memory that does not
    grow with the log: an id is kept while its message is in flight, counted when its message
    record arrives (:meth:`finish`), then remembered among the last ``memory`` finished ones
    only (as many as the tracker remembers), so that a late line about it does not count it
    twice."""

    memory: int = FINISHED_MEMORY
    finished: int = 0
    _open: set[str] = field(default_factory=set)
    _done: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def add(self, queue_id: str) -> None:
        """Something happened to this message."""
        if queue_id not in self._open and queue_id not in self._done:
            self._open.add(queue_id)

    def finish(self, queue_id: str | None) -> None:
        """This message's record arrived: count it, if something happened to it."""
        if queue_id is None or queue_id not in self._open:
            return
        self._open.discard(queue_id)
        self.finished += 1
        self._done[queue_id] = None
        if len(self._done) > self.memory:
            self._done.popitem(last=False)

    def __len__(self) -> int:
        return self.finished + len(self._open)


@dataclass(slots=True)
class Tally:
    """Counts :class:`Event` values; :meth:`totals` gives the numbers."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOTALS, 0))
    _deferred_ids: DistinctMessages = field(default_factory=DistinctMessages)

    def add(self, event: Event) -> None:
        """Count one event (only ``reply`` and ``message`` events count)."""
        if event.event == EventKind.REPLY:
            self._reply(event)
        elif event.event == EventKind.MESSAGE and event.message is not None:
            record = event.message
            self._deferred_ids.finish(event.queue_id)
            counted = counted_as(record)
            if counted is not None:
                self.counts[counted] += 1
            if record.status == "expired":
                self.counts["expired"] += 1

    def _reply(self, event: Event) -> None:
        extra = event.extra
        if extra.get("detail"):
            return
        if event.direction == Direction.UPSTREAM:
            action = str(extra.get("action") or "reject")
            counted = _ACTIONS.get(action)
            if counted is not None and event.klass != "success":
                self.counts[counted] += 1
            return
        status = extra.get("status")
        if status == "sent":
            self.counts["delivered"] += 1
            if extra.get("transport") == "discard":
                self.counts["discarded_delivered"] += 1
        elif status == "bounced":
            self.counts["bounced"] += 1
        elif status == "deferred":
            self.counts["deferrals"] += 1
            if event.queue_id is not None:
                self._deferred_ids.add(event.queue_id)

    def totals(self) -> dict[str, int]:
        """Every count of :data:`TOTALS`, in that order."""
        return {**self.counts, "deferred": len(self._deferred_ids)}
