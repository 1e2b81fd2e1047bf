"""The reason-aware report: text, JSON and one self-contained HTML page."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from smtp_policy.adapters.follow.pipeline import replay
from smtp_policy.data import default_knowledge
from smtp_policy.maillog.report import ReportBuilder, render_html, render_text
from tests.helpers import SAMPLES

SAMPLE = SAMPLES / "postfix-3.7-maillog-sample.log"


@pytest.fixture(name="data", scope="module")
def _data() -> dict[str, Any]:
    return ReportBuilder().add_all(replay([str(SAMPLE)], default_knowledge())).result()


def count(pattern: str) -> int:
    """Lines of the sample that match ``pattern``."""
    return sum(1 for line in SAMPLE.read_text().splitlines() if re.search(pattern, line))


def test_totals_match_the_log(data: dict[str, Any]) -> None:
    """Delivered, bounced, deferred and rejected are what the lines say, as pflogsumm counts."""
    totals = data["totals"]
    assert totals["delivered"] == count(r"status=sent ")
    assert totals["bounced"] == count(r"status=bounced ")
    assert totals["deferred"] == count(r"status=deferred ")
    assert totals["rejected"] == count(r": (milter-)?reject: ")
    assert totals["received"] >= count(r": removed$") - 0
    assert 0 < totals["deferred_messages"] <= totals["deferred"]


def test_top_reasons_have_an_example_and_an_explanation(data: dict[str, Any]) -> None:
    """Each row: a reason, a count, the first reply seen and the one-line summary."""
    for direction in ("upstream", "downstream"):
        rows = data["reasons"][direction]
        assert rows, direction
        assert [r["count"] for r in rows] == sorted((r["count"] for r in rows), reverse=True)
        for row in rows:
            assert row["example"] and row.get("summary")
    upstream = {r.get("reason") for r in data["reasons"]["upstream"]}
    assert "user_unknown" in upstream
    downstream = {r.get("reason") for r in data["reasons"]["downstream"]}
    assert {"mailbox_full", "network_error"} <= downstream


def test_deferrals_by_domain(data: dict[str, Any]) -> None:
    """Deferrals are grouped by recipient domain, then by reason."""
    domains = {d["domain"]: d for d in data["deferral_domains"]}
    assert "down.test" in domains
    assert sum(d["deferrals"] for d in domains.values()) == data["totals"]["deferred"]


def test_text_report(data: dict[str, Any]) -> None:
    """The text names every total and both directions."""
    text = render_text(data)
    for word in ("received", "delivered", "deferred", "bounced", "rejected", "Upstream"):
        assert word in text
    assert "e.g. 550 5.1.1" in text


def test_json_report_round_trips(data: dict[str, Any]) -> None:
    """The data is plain JSON."""
    assert json.loads(json.dumps(data)) == data


def test_html_is_one_self_contained_page(data: dict[str, Any]) -> None:
    """One document, inline CSS and SVG, and nothing loaded from anywhere else."""
    page = render_html(data)
    assert page.count("<html") == 1 and page.rstrip().endswith("</html>")
    assert "<svg" in page and "<rect" in page
    assert not re.search(r"""\b(src|href)\s*=|url\(|@import|<link|<script""", page, re.I)


def test_html_escapes_log_text() -> None:
    """Text from the log cannot inject markup."""
    builder = ReportBuilder()
    data = builder.result()
    data["reasons"]["upstream"] = [
        {
            "reason": "blocked",
            "count": 1,
            "summary": "s",
            "example": "<script>alert(1)</script>",
            "code": 554,
            "enhanced": None,
        }
    ]
    page = render_html(data)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_empty_report_renders() -> None:
    """No events: every renderer still works."""
    data = ReportBuilder().result()
    assert "(none)" in render_text(data)
    assert "<html" in render_html(data)
