"""Follow metrics: label values stay bounded whatever the events say."""

from __future__ import annotations


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
    rows = {line.split("`")[1]: line for line in doc.splitlines() if line.startswith("| `")}
    families = list(FollowMetrics(default_knowledge()).registry.collect())
    shown = {f.name + ("_total" if f.type == "counter" else ""): f.type for f in families}
    assert set(rows) == set(shown)
    for name, kind in shown.items():
        assert f"| {kind} |" in rows[name]
    closed = [*DIRECTIONS, *STAGES, *MESSAGE_STATUSES, *(c.value for c in ReplyClass)]
    assert [v for v in closed if f"`{v}`" not in doc] == []
