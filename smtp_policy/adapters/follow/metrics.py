"""Prometheus metrics of the log follower, with bounded label sets.

Every label value comes from a closed vocabulary (directions, stages, reply classes, reasons,
the enhanced codes of the IANA registry, the parser's line kinds); anything else is counted as
"other", so a hostile or broken log cannot create unbounded time series. The delivery delay
histogram is fed from ``message`` records, so each message counts once when it leaves the
queue, however many times it was retried.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from smtp_policy.config.listen import ListenAddress
from smtp_policy.core.events import Event, EventKind
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import Reason, ReplyClass
from smtp_policy.maillog.record import KINDS

OTHER = "other"
NONE = "none"
DIRECTIONS = frozenset({"upstream", "downstream"})
STAGES = frozenset({"connect", "helo", "mail", "rcpt", "data", "eom"})
#: The parser's line kinds, "other" (not from Postfix or Sendmail) and "parse_error".
LINE_KINDS = frozenset({*KINDS, "other", "parse_error"})
MESSAGE_STATUSES = frozenset(
    {
        "delivered",
        "bounced",
        "partial",
        "expired",
        "rejected",
        "removed",
        "incomplete",
        "not_queued",
    }
)
#: Seconds from arrival to leaving the queue: sub-second local delivery up to a 5-day expiry.
DELAY_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400)


def bounded(value: object, allowed: Iterable[str] | frozenset[str]) -> str:
    """``value`` as a label if it is in ``allowed``, "none" when missing, else "other"."""
    if value is None or value == "":
        return NONE
    text = str(value)
    return text if text in allowed else OTHER


class FollowMetrics:
    """The follower's counters, gauge and histogram in their own registry."""

    def __init__(self, kb: KnowledgeBase, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._classes = frozenset(c.value for c in ReplyClass)
        self._reasons = frozenset(r.value for r in Reason)
        self._enhanced = _enhanced_codes(kb)
        self.replies = Counter(
            "smtp_policy_log_replies",
            "SMTP replies seen in the mail log",
            ["direction", "stage", "class", "reason", "enhanced"],
            registry=self.registry,
        )
        self.messages = Counter(
            "smtp_policy_log_messages",
            "Messages that left the queue (or were flushed), by final status",
            ["status"],
            registry=self.registry,
        )
        self.lines = Counter(
            "smtp_policy_log_lines",
            "Mail log lines read, by the parser's kind",
            ["kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "smtp_policy_log_messages_in_flight",
            "Messages being tracked (in the queue, as far as the log tells)",
            registry=self.registry,
        )
        self.delay = Histogram(
            "smtp_policy_log_delivery_delay_seconds",
            "Time from arrival to leaving the queue, once per message",
            buckets=DELAY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, event: Event) -> None:
        """Count a reply event, or a message record (status and delay)."""
        if event.event == EventKind.REPLY:
            self.replies.labels(
                bounded(event.direction, DIRECTIONS),
                bounded(event.stage, STAGES),
                bounded(event.klass, self._classes),
                bounded(event.reason, self._reasons),
                bounded(event.enhanced, self._enhanced),
            ).inc()
        elif event.message is not None:
            record = event.message
            self.messages.labels(bounded(record.status, MESSAGE_STATUSES)).inc()
            if record.complete:
                self.delay.observe(float(record.delay))

    def count_lines(self, counts: Mapping[str, int]) -> None:
        """Add a batch's line counts by kind."""
        for kind, n in counts.items():
            self.lines.labels(bounded(kind, LINE_KINDS)).inc(n)


def _enhanced_codes(kb: KnowledgeBase) -> frozenset[str]:
    """Every concrete code of the registry: ``X.1.1`` gives 2.1.1, 4.1.1 and 5.1.1."""
    out: set[str] = set()
    for key in kb.enhanced:
        _, subject, detail = key.split(".")
        out.update(f"{k}.{subject}.{detail}" for k in (2, 4, 5))
    return frozenset(out)


def serve(metrics: FollowMetrics, address: ListenAddress) -> None:
    """Serve ``/metrics`` on the TCP ``address`` from a daemon thread (prometheus_client's
    server); ConfigError for a unix socket, OSError when the address cannot be bound."""
    host, port = address.host_port
    start_http_server(port, addr=host, registry=metrics.registry)
