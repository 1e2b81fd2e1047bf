"""Follow metrics: label values stay bounded whatever the events say."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from smtp_policy.core.events import Event


def test_metric_labels_are_bounded() -> None:
    """Unknown reasons, stages and codes are counted as "other", never as new label values."""
    from datetime import UTC, datetime

    from smtp_policy.adapters.follow.metrics import FollowMetrics
    from smtp_policy.core.events import Direction, Event, EventKind, MessageSummary, Source
    from smtp_policy.data import default_knowledge

    metrics = FollowMetrics(default_knowledge())
    odd = Event(
        event=EventKind.REPLY,
        source=Source.LOG,
        ts=datetime.now(UTC),
        direction=Direction.UPSTREAM,
        stage="x" * 50,
        klass="permanent",
        reason="made_up",
        enhanced="5.999.999",
    )
    for _ in range(3):
        metrics.observe(odd)
    value = metrics.registry.get_sample_value(
        "smtp_policy_log_replies_total",
        {
            "direction": "upstream",
            "stage": "other",
            "class": "permanent",
            "reason": "other",
            "enhanced": "other",
        },
    )
    assert value == 3
    record = MessageSummary(
        status="delivered", complete=True, received="2026-11-28T12:00:00Z", delay=12.5
    )
    message = Event(
        event=EventKind.MESSAGE, source=Source.LOG, ts=datetime.now(UTC), message=record
    )
    metrics.observe(message)
    assert metrics.registry.get_sample_value("smtp_policy_log_delivery_delay_seconds_count") == 1


def test_docs_metrics_lists_every_family_and_closed_label_list() -> None:
    """docs/metrics.md: one row per metric family with its type, and every closed label value."""
    from pathlib import Path

    from smtp_policy.adapters.follow.metrics import (
        DIRECTIONS,
        MESSAGE_STATUSES,
        STAGES,
        FollowMetrics,
    )
    from smtp_policy.core.model import ReplyClass
    from smtp_policy.data import default_knowledge

    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    rows = {
        line.split("`")[1]: line
        for line in doc.splitlines()
        if line.startswith("| `smtp_policy_")  # the families table (not the alerts, the mapping)
    }
    from smtp_policy.config.model import MetricsConfig

    every = MetricsConfig(top_domains=5, queue_interval=60)  # the opt-in families too
    families = list(FollowMetrics(default_knowledge(), options=every).registry.collect())
    shown = {f.name + ("_total" if f.type == "counter" else ""): f.type for f in families}
    assert set(rows) == set(shown)
    for name, kind in shown.items():
        assert f"| {kind} |" in rows[name]
    closed = [*DIRECTIONS, *STAGES, *MESSAGE_STATUSES, *(c.value for c in ReplyClass)]
    assert [v for v in closed if f"`{v}`" not in doc] == []


def _reply(**fields: Any) -> Event:
    from datetime import UTC, datetime

    from smtp_policy.core.events import Event, EventKind, Source

    return Event(event=EventKind.REPLY, source=Source.LOG, ts=datetime.now(UTC), **fields)


def test_new_families_bound_codes_reasons_statuses_and_stages() -> None:
    """Refusals by code, deliveries by status: odd values are "other", never new series."""
    from smtp_policy.adapters.follow.metrics import FollowMetrics
    from smtp_policy.core.events import Direction
    from smtp_policy.data import default_knowledge

    metrics = FollowMetrics(default_knowledge())
    metrics.observe(
        _reply(
            direction=Direction.UPSTREAM,
            stage="rcpt",
            code=550,
            enhanced="5.1.1",
            klass="permanent",
            reason="user_unknown",
        )
    )
    metrics.observe(_reply(direction=Direction.UPSTREAM, stage="rcpt", code=999, reason="x" * 300))
    metrics.observe(_reply(direction=Direction.UPSTREAM, stage="eom", code=250, reason="accepted"))
    for status in ("deferred (host said ...)", "sent (250 ok)", "weird"):
        metrics.observe(
            _reply(
                direction=Direction.DOWNSTREAM,
                stage="rcpt",
                code=450,
                enhanced="4.7.1",
                reason="greylisting",
                extra={"status": status},
            )
        )
    sample = metrics.registry.get_sample_value
    rejects = "smtp_policy_smtpd_rejects_total"
    labels = {"code": "550", "enhanced": "5.1.1", "reason": "user_unknown", "stage": "rcpt"}
    assert sample(rejects, labels) == 1
    odd = {"code": "other", "enhanced": "none", "reason": "other", "stage": "rcpt"}
    assert sample(rejects, odd) == 1
    total = sum(
        s.value
        for f in metrics.registry.collect()
        if f.name == "smtp_policy_smtpd_rejects"
        for s in f.samples
    )
    assert total == 2  # a 250 is no refusal
    deliveries = "smtp_policy_smtp_deliveries_total"
    for status in ("deferred", "sent", "other"):
        labels = {"status": status, "reason": "greylisting", "enhanced": "4.7.1"}
        assert sample(deliveries, labels) == 1
    assert not [f for f in metrics.registry.collect() for s in f.samples if "_created" in s.name]


def test_records_count_lost_connections_warnings_milters_and_unsupported_lines() -> None:
    """Lines no event tells of, fed through the pipeline: each counted once, labels bounded."""
    from smtp_policy.adapters.follow.metrics import FollowMetrics
    from smtp_policy.adapters.follow.pipeline import Pipeline
    from smtp_policy.data import default_knowledge
    from smtp_policy.maillog.parse import parse_line
    from smtp_policy.maillog.tracker import MessageTracker

    kb = default_knowledge()
    metrics = FollowMetrics(kb)
    head = "Feb 18 09:50:05 mx postfix"
    lines = [
        f"{head}/smtpd[42]: lost connection after DATA from a.example[192.0.2.10]",
        f"{head}/smtpd[42]: timeout after EHLO from a.example[192.0.2.10]",
        f"{head}/smtpd[42]: warning: milter inet:127.0.0.1:8891: can't read SMFIC_OPTNEG "
        "reply packet header: Connection timed out",
        f"{head}/smtpd[42]: warning: connect to Milter service inet:127.0.0.1:1: "
        "Connection refused",
        f"{head}/smtpd[42]: warning: hostname a.example does not resolve to address 192.0.2.1",
        f"{head}/qmgr[43]: something no shape knows",
        f"{head}/made-up-daemon[44]: something no shape knows",
    ]
    pipeline = Pipeline(MessageTracker(kb), lambda event: None, parse_line, metrics)
    pipeline.feed(lines)
    sample = metrics.registry.get_sample_value
    lost = "smtp_policy_smtpd_connections_lost_total"
    assert sample(lost, {"stage": "data", "cause": "lost"}) == 1
    assert sample(lost, {"stage": "ehlo", "cause": "timeout"}) == 1
    assert sample("smtp_policy_log_warnings_total", {"level": "warning"}) == 3
    assert sample("smtp_policy_milter_failures_total", {"level": "warning"}) == 2
    unsupported = "smtp_policy_log_unsupported_lines_total"
    assert sample(unsupported, {"program": "qmgr"}) == 1
    assert sample(unsupported, {"program": "other"}) == 1
    assert sample("smtp_policy_follow_up") == 1
    assert (sample("smtp_policy_follow_last_line_timestamp_seconds") or 0) > 0


def test_domain_labels_are_opt_in_and_at_most_top_domains() -> None:
    """Without top_domains no domain family; with it, at most that many domain labels."""
    from smtp_policy.adapters.follow.metrics import DOMAIN_THRESHOLD, FollowMetrics
    from smtp_policy.config.model import MetricsConfig
    from smtp_policy.core.events import Direction
    from smtp_policy.data import default_knowledge

    kb = default_knowledge()
    assert "smtp_policy_smtp_deliveries_by_domain" not in {
        f.name for f in FollowMetrics(kb).registry.collect()
    }
    metrics = FollowMetrics(kb, options=MetricsConfig(top_domains=2))
    for n in range(50):
        for rcpt in (f"u{n}@Big.Example", f"u@d{n}.example", "bad@x y", "<v@busy.example.>"):
            metrics.observe(
                _reply(
                    direction=Direction.DOWNSTREAM,
                    recipient=rcpt,
                    code=250,
                    extra={"status": "sent"},
                )
            )
    family = next(
        f for f in metrics.registry.collect() if f.name == "smtp_policy_smtp_deliveries_by_domain"
    )
    by_domain = {s.labels["domain"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert set(by_domain) == {"big.example", "busy.example", "other", "none"}
    assert by_domain["big.example"] == 50 - DOMAIN_THRESHOLD + 1
    assert by_domain["none"] == 50
    assert sum(by_domain.values()) == 200


def test_queue_gauges_from_postqueue_json() -> None:
    """postqueue -j lines become size, bytes, oldest age and deferred reasons; junk is skipped."""
    import json

    from prometheus_client import CollectorRegistry

    from smtp_policy.adapters.follow.metrics import QueuePoller, read_queue
    from smtp_policy.data import default_knowledge

    registry = CollectorRegistry()
    poller = QueuePoller(default_knowledge(), registry, interval=60)
    grey = "host mx.remote.test[192.0.2.5] said: 450 4.7.1 Greylisted, try again later"
    entries = [
        {"queue_name": "deferred", "arrival_time": 1000, "message_size": 300,
         "recipients": [{"address": "a@x", "delay_reason": grey}, {"address": "b@x"}]},
        {"queue_name": "deferred", "arrival_time": 1500, "message_size": 200,
         "recipients": [{"address": "c@x", "delay_reason": grey}]},
        {"queue_name": "active", "arrival_time": 1900, "message_size": 10, "recipients": []},
        {"queue_name": "../../etc", "arrival_time": 1, "message_size": 10},
    ]  # fmt: skip
    lines = [json.dumps(e) for e in entries] + ["not json", "[1, 2]"]
    snapshot = read_queue(lines, poller.reason_of)
    poller.update(snapshot, now=2000.0)
    sample = registry.get_sample_value
    assert sample("smtp_policy_postfix_queue_messages", {"queue": "deferred"}) == 2
    assert sample("smtp_policy_postfix_queue_messages", {"queue": "hold"}) == 0
    assert sample("smtp_policy_postfix_queue_size_bytes", {"queue": "deferred"}) == 500
    assert sample("smtp_policy_postfix_queue_oldest_age_seconds", {"queue": "deferred"}) == 1000
    assert sample("smtp_policy_postfix_queue_oldest_age_seconds", {"queue": "hold"}) == 0
    reasons = "smtp_policy_postfix_queue_deferred_recipients"
    assert sample(reasons, {"reason": "greylisting"}) == 2
    poller.update(read_queue([], poller.reason_of), now=2100.0)
    assert sample(reasons, {"reason": "greylisting"}) == 0


def test_failing_postqueue_is_one_stderr_line_and_success_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """postqueue failing: the success gauge says 0 and stderr says why, once."""
    import subprocess

    from prometheus_client import CollectorRegistry

    from smtp_policy.adapters.follow import metrics as module
    from smtp_policy.data import default_knowledge

    def broken(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        message = "postqueue: fatal: Queue report unavailable - mail system is down\n"
        return subprocess.CompletedProcess(argv, 69, "", message)

    monkeypatch.setattr(subprocess, "run", broken)  # the module calls subprocess.run
    registry = CollectorRegistry()
    poller = module.QueuePoller(default_knowledge(), registry, 1, config_dir="/etc/postfix-out")
    assert poller.command == ["postqueue", "-c", "/etc/postfix-out", "-j"]
    assert not poller.poll()
    assert not poller.poll()
    assert registry.get_sample_value("smtp_policy_postfix_queue_poll_success") == 0
    err = capsys.readouterr().err
    assert err == (
        "smtp-policy follow: postqueue -c /etc/postfix-out -j: postqueue: fatal: Queue report "
        "unavailable - mail system is down\n"
    )
