"""Prometheus metrics of the log follower, with bounded label sets.

Every label value comes from a closed vocabulary (directions, stages, reply classes, reasons,
the enhanced codes of the IANA registry, reply codes 400-599, the parser's line kinds, the
Postfix and Sendmail program names); anything else is counted as "other", so a hostile or broken
log cannot create unbounded time series. Recipient domains are labels only when asked for
([metrics] ``top_domains``), and then at most that many. Delays are fed from ``message``
records, so each message counts once when it leaves the queue, however many times it was
retried. The Postfix queue gauges come from ``postqueue -j``, polled from a thread
(:class:`QueuePoller`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from smtp_policy.config.listen import ListenAddress
from smtp_policy.config.model import MetricsConfig
from smtp_policy.core.events import Event, EventKind
from smtp_policy.core.explain import explain_text
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import Reason, ReplyClass
from smtp_policy.maillog.record import KINDS, LogRecord

disable_created_metrics()  # type: ignore[no-untyped-call]  # no "_created" twin per series

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
#: The status of one delivery attempt (``status=`` of a Postfix delivery line).
DELIVERY_STATUSES = frozenset({"sent", "deferred", "bounced", "expired"})
#: The stages a client connection can end in: the reply stages and the commands Postfix names
#: ("lost connection after STARTTLS"), lowercased.
LOST_STAGES = frozenset(
    {*STAGES, "ehlo", "lhlo", "starttls", "auth", "rset", "noop", "vrfy", "etrn", "quit", "unknown"}
)
#: How a client connection ended early: "lost connection after ..." or "timeout after ...".
LOST_CAUSES = frozenset({"lost", "timeout"})
WARNING_LEVELS = frozenset({"warning", "error", "fatal", "panic"})
#: Reply codes a refusal may carry.
REJECT_CODES = frozenset(str(code) for code in range(400, 600))
#: The programs that write mail log lines (Postfix daemons and tools, Sendmail).
PROGRAMS = frozenset(
    {
        "anvil",
        "bounce",
        "cleanup",
        "discard",
        "dnsblog",
        "error",
        "flush",
        "lmtp",
        "local",
        "master",
        "pickup",
        "pipe",
        "postdrop",
        "postfix",
        "postfix-script",
        "postmap",
        "postqueue",
        "postscreen",
        "postsuper",
        "proxymap",
        "qmgr",
        "scache",
        "sendmail",
        "showq",
        "sm-mta",
        "sm-msp-queue",
        "smtp",
        "smtpd",
        "tlsmgr",
        "tlsproxy",
        "trivial-rewrite",
        "verify",
        "virtual",
    }
)
#: Record kinds :meth:`FollowMetrics.observe_record` counts.
RECORD_KINDS = frozenset({"lost_connection", "timeout", "warning", "unknown"})


#: Postfix's queues as ``postqueue -j`` names them.
QUEUES = frozenset({"maildrop", "hold", "incoming", "active", "deferred"})
#: Seconds from arrival to leaving the queue: sub-second local delivery up to a 5-day expiry.
DELAY_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400)
#: Deliveries a domain needs before it gets its own label (with ``top_domains``).
DOMAIN_THRESHOLD = 10
#: Candidate domains remembered before the list starts over (memory stays flat).
DOMAIN_CANDIDATES = 10_000
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


def bounded(value: object, allowed: Iterable[str] | frozenset[str]) -> str:
    """``value`` as a label if it is in ``allowed``, "none" when missing, else "other"."""
    if value is None or value == "":
        return NONE
    text = str(value)
    return text if text in allowed else OTHER


class DomainLabels:
    """At most ``limit`` domains as labels: the first to reach ``threshold`` deliveries.

    A domain keeps its label until restart, so counters stay monotonic; until then (and for
    every domain once the list is full) it is "other".
    """

    def __init__(self, limit: int, threshold: int = DOMAIN_THRESHOLD) -> None:
        self.limit = limit
        self.threshold = threshold
        self.labelled: set[str] = set()
        self._counts: dict[str, int] = {}

    def label(self, address: str | None) -> str:
        """The label of ``address``'s domain: itself, "other" or "none"."""
        domain = _domain_of(address)
        if domain is None:
            return NONE
        if domain in self.labelled:
            return domain
        if len(self.labelled) >= self.limit:
            return OTHER
        seen = self._counts.get(domain, 0) + 1
        if seen >= self.threshold:
            self.labelled.add(domain)
            self._counts.pop(domain, None)
            return domain
        if len(self._counts) >= DOMAIN_CANDIDATES:
            self._counts.clear()
        self._counts[domain] = seen
        return OTHER


def _domain_of(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    domain = address.strip("<>").rpartition("@")[2].lower().rstrip(".")
    return domain if _DOMAIN.fullmatch(domain) else None


class FollowMetrics:
    """The follower's counters, gauges and histograms in their own registry."""

    def __init__(
        self,
        kb: KnowledgeBase,
        registry: CollectorRegistry | None = None,
        options: MetricsConfig | None = None,
    ) -> None:
        options = options or MetricsConfig()
        self.registry = registry or CollectorRegistry()
        self.options = options
        self._classes = frozenset(c.value for c in ReplyClass)
        self._reasons = frozenset(r.value for r in Reason)
        self._enhanced = _enhanced_codes(kb)
        self._domains = DomainLabels(options.top_domains) if options.top_domains > 0 else None
        registry = self.registry
        self.replies = Counter(
            "smtp_policy_log_replies",
            "SMTP replies seen in the mail log",
            ["direction", "stage", "class", "reason", "enhanced"],
            registry=registry,
        )
        self.messages = Counter(
            "smtp_policy_log_messages",
            "Messages that left the queue (or were flushed), by final status",
            ["status"],
            registry=registry,
        )
        self.lines = Counter(
            "smtp_policy_log_lines",
            "Mail log lines read, by the parser's kind",
            ["kind"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "smtp_policy_log_messages_in_flight",
            "Messages being tracked (in the queue, as far as the log tells)",
            registry=registry,
        )
        self.delay = Histogram(
            "smtp_policy_log_delivery_delay_seconds",
            "Time from arrival to leaving the queue, once per message",
            buckets=DELAY_BUCKETS,
            registry=registry,
        )
        self.rejects = Counter(
            "smtp_policy_smtpd_rejects",
            "Refusals (4xx/5xx) your MTA sent to clients, by code, enhanced code and reason",
            ["code", "enhanced", "reason", "stage"],
            registry=registry,
        )
        self.deliveries = Counter(
            "smtp_policy_smtp_deliveries",
            "Delivery attempts (one per recipient and try), by status and reason",
            ["status", "reason", "enhanced"],
            registry=registry,
        )
        self.message_delay = Histogram(
            "smtp_policy_message_delay_seconds",
            "Time from arrival to the final status, once per message, by that status",
            ["status"],
            buckets=DELAY_BUCKETS,
            registry=registry,
        )
        self.lost = Counter(
            "smtp_policy_smtpd_connections_lost",
            "Client connections that ended early, by the stage they ended in",
            ["stage", "cause"],
            registry=registry,
        )
        self.unsupported = Counter(
            "smtp_policy_log_unsupported_lines",
            "Postfix or Sendmail lines the parser does not understand, by program",
            ["program"],
            registry=registry,
        )
        self.warnings = Counter(
            "smtp_policy_log_warnings",
            "warning, error, fatal and panic lines, by level",
            ["level"],
            registry=registry,
        )
        self.milter_failures = Counter(
            "smtp_policy_milter_failures",
            "Milter failures Postfix logged (it then applies the milter's default_action)",
            ["level"],
            registry=registry,
        )
        self.up = Gauge(
            "smtp_policy_follow_up",
            "1 while every source can be read, 0 when one cannot",
            registry=registry,
        )
        self.last_line = Gauge(
            "smtp_policy_follow_last_line_timestamp_seconds",
            "When the follower last read a line (Unix time)",
            registry=registry,
        )
        self.last_poll = Gauge(
            "smtp_policy_follow_last_poll_timestamp_seconds",
            "When the follower last polled its sources (Unix time)",
            registry=registry,
        )
        self.domain_deliveries = (
            Counter(
                "smtp_policy_smtp_deliveries_by_domain",
                "Delivery attempts by recipient domain (top_domains of them; the rest: other)",
                ["domain", "status"],
                registry=registry,
            )
            if self._domains is not None
            else None
        )
        self.poller: QueuePoller | None = None
        if options.queue_interval > 0:
            self.poller = QueuePoller(
                kb, registry, options.queue_interval, options.queue_config_directory
            )
        self.record_kinds = RECORD_KINDS
        self.up.set(1)
        self.last_poll.set_to_current_time()

    def observe(self, event: Event) -> None:
        """Count a reply event, or a message record (status and delay)."""
        if event.event == EventKind.REPLY:
            self._reply(event)
        elif event.message is not None:
            record = event.message
            status = bounded(record.status, MESSAGE_STATUSES)
            self.messages.labels(status).inc()
            if record.complete:
                delay = float(record.delay)
                self.delay.observe(delay)
                self.message_delay.labels(status).observe(delay)

    def _reply(self, event: Event) -> None:
        reason = bounded(event.reason, self._reasons)
        enhanced = bounded(event.enhanced, self._enhanced)
        stage = bounded(event.stage, STAGES)
        direction = bounded(event.direction, DIRECTIONS)
        self.replies.labels(
            direction, stage, bounded(event.klass, self._classes), reason, enhanced
        ).inc()
        if direction == "upstream":
            if event.code is not None and event.code >= 400:
                self.rejects.labels(
                    bounded(event.code, REJECT_CODES), enhanced, reason, stage
                ).inc()
            return
        status = event.extra.get("status") if event.extra else None
        if status is None:
            return
        word = _delivery_status(str(status), event.enhanced)
        self.deliveries.labels(word, reason, enhanced).inc()
        if self._domains is not None and self.domain_deliveries is not None:
            self.domain_deliveries.labels(self._domains.label(event.recipient), word).inc()

    def observe_record(self, record: LogRecord) -> None:
        """Count a record no event tells of: a lost connection, a warning, an unknown line."""
        kind = record.kind
        if kind in {"lost_connection", "timeout"}:
            cause = "lost" if kind == "lost_connection" else "timeout"
            self.lost.labels(bounded(record.stage, LOST_STAGES), cause).inc()
        elif kind == "warning":
            level = bounded(record.extra_value("level"), WARNING_LEVELS)
            self.warnings.labels(level).inc()
            if _milter_failure(record):
                self.milter_failures.labels(level).inc()
        elif kind == "unknown":
            self.unsupported.labels(bounded(record.program, PROGRAMS)).inc()

    def count_lines(self, counts: Mapping[str, int]) -> None:
        """Add a batch's line counts by kind; a batch with lines moves the last-line time."""
        for kind, n in counts.items():
            self.lines.labels(bounded(kind, LINE_KINDS)).inc(n)
        if counts:
            self.last_line.set_to_current_time()


def _delivery_status(status: str, enhanced: str | None) -> str:
    word = status.lower()
    if word.startswith("sent"):
        return "sent"
    if word.startswith("deferred") or word == "softbounce":
        return "deferred"
    if word in DELIVERY_STATUSES:
        return word
    if enhanced and enhanced[:1] == "5":
        return "bounced"
    return OTHER


def _milter_failure(record: LogRecord) -> bool:
    """A Postfix warning about an unavailable or misbehaving milter."""
    if record.extra_value("milter") is not None:
        return True
    message = record.extra_value("message") or ""
    return message.startswith("connect to Milter service")


def _enhanced_codes(kb: KnowledgeBase) -> frozenset[str]:
    """Every concrete code of the registry: ``X.1.1`` gives 2.1.1, 4.1.1 and 5.1.1."""
    out: set[str] = set()
    for key in kb.enhanced:
        _, subject, detail = key.split(".")
        out.update(f"{k}.{subject}.{detail}" for k in (2, 4, 5))
    return frozenset(out)


# -- the Postfix queue ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """What ``postqueue -j`` listed, by queue: messages, bytes, oldest arrival (Unix time);
    ``deferred_reasons`` counts deferred recipients by the reason of their delay."""

    messages: Mapping[str, int]
    size: Mapping[str, int]
    oldest: Mapping[str, float]
    deferred_reasons: Mapping[str, int]


def read_queue(lines: Iterable[str], reason_of: Callable[[str], str]) -> QueueSnapshot:
    """Sum ``postqueue -j`` output (one JSON object a line); bad lines are skipped."""
    messages = dict.fromkeys(QUEUES, 0)
    size = dict.fromkeys(QUEUES, 0)
    oldest: dict[str, float] = {}
    reasons: dict[str, int] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        queue = bounded(entry.get("queue_name"), QUEUES)
        if queue not in QUEUES:
            continue
        messages[queue] += 1
        if isinstance(entry.get("message_size"), int):
            size[queue] += entry["message_size"]
        arrival = entry.get("arrival_time")
        if isinstance(arrival, int | float):
            oldest[queue] = min(oldest.get(queue, float(arrival)), float(arrival))
        for rcpt in entry.get("recipients") or ():
            why = rcpt.get("delay_reason") if isinstance(rcpt, dict) else None
            if queue == "deferred" and isinstance(why, str) and why:
                reason = reason_of(why)
                reasons[reason] = reasons.get(reason, 0) + 1
    return QueueSnapshot(messages, size, oldest, reasons)


class QueuePoller:
    """Polls ``postqueue -j`` every ``interval`` seconds from a daemon thread into gauges."""

    def __init__(
        self,
        kb: KnowledgeBase,
        registry: CollectorRegistry,
        interval: float,
        config_dir: str | None = None,
        postqueue: str = "postqueue",
    ) -> None:
        self.interval = interval
        self.command: Sequence[str] = (
            [postqueue, "-c", config_dir, "-j"] if config_dir else [postqueue, "-j"]
        )
        self._kb = kb
        self._reasons = frozenset(r.value for r in Reason)
        self._cache: dict[str, str] = {}
        self._shown: set[str] = set()
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.messages = Gauge(
            "smtp_policy_postfix_queue_messages",
            "Messages in each Postfix queue (postqueue -j)",
            ["queue"],
            registry=registry,
        )
        self.size = Gauge(
            "smtp_policy_postfix_queue_size_bytes",
            "Bytes of the messages in each Postfix queue",
            ["queue"],
            registry=registry,
        )
        self.oldest = Gauge(
            "smtp_policy_postfix_queue_oldest_age_seconds",
            "Age of the oldest message in each Postfix queue (0 when empty)",
            ["queue"],
            registry=registry,
        )
        self.deferred = Gauge(
            "smtp_policy_postfix_queue_deferred_recipients",
            "Deferred recipients in the queue, by the reason of their delay",
            ["reason"],
            registry=registry,
        )
        self.ok = Gauge(
            "smtp_policy_postfix_queue_poll_success",
            "1 if the last postqueue -j run worked, else 0",
            registry=registry,
        )

    def reason_of(self, text: str) -> str:
        """The reason of a delay text, from the knowledge (cached), bounded."""
        reason = self._cache.get(text)
        if reason is None:
            found = explain_text(text, self._kb).classification.reason
            reason = bounded(found.value if found else None, self._reasons)
            if len(self._cache) < 4096:
                self._cache[text] = reason
        return reason

    def poll(self) -> bool:
        """Run postqueue once and set the gauges; False (and success 0) if it failed."""
        try:
            done = subprocess.run(
                self.command, capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return self._failed(str(exc))
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            return self._failed(lines[-1] if lines else f"exit status {done.returncode}")
        self.update(read_queue(done.stdout.splitlines(), self.reason_of), time.time())
        self.ok.set(1)
        self._failing = False
        return True

    def _failed(self, why: str) -> bool:
        """Success 0; one line on stderr when polls start failing (not on every poll)."""
        self.ok.set(0)
        if not self._failing:
            self._failing = True
            command = " ".join(self.command)
            print(f"smtp-policy follow: {command}: {why}", file=sys.stderr, flush=True)
        return False

    def update(self, snapshot: QueueSnapshot, now: float) -> None:
        """Set every gauge from ``snapshot``; reasons no longer deferred go back to 0."""
        for queue in QUEUES:
            self.messages.labels(queue).set(snapshot.messages.get(queue, 0))
            self.size.labels(queue).set(snapshot.size.get(queue, 0))
            arrival = snapshot.oldest.get(queue)
            self.oldest.labels(queue).set(max(0.0, now - arrival) if arrival is not None else 0)
        for reason in self._shown:
            if reason not in snapshot.deferred_reasons:
                self.deferred.labels(reason).set(0)
        for reason, count in snapshot.deferred_reasons.items():
            self.deferred.labels(reason).set(count)
            self._shown.add(reason)

    def start(self) -> None:
        """Poll now, then every ``interval`` seconds until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="postqueue", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (waits for a poll in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=70)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)


def serve(metrics: FollowMetrics, address: ListenAddress) -> None:
    """Serve ``/metrics`` on the TCP ``address`` from a daemon thread (prometheus_client's
    server); ConfigError for a unix socket, OSError when the address cannot be bound."""
    host, port = address.host_port
    start_http_server(port, addr=host, registry=metrics.registry)
