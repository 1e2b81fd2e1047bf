"""The reason-aware report: text, JSON and one self-contained HTML page."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from smtp_policy.adapters.follow.pipeline import replay, replay_tracked
from smtp_policy.data import default_knowledge
from smtp_policy.maillog.report import (
    LINE_KINDS,
    TITLES,
    TOTAL_ROWS,
    ReportBuilder,
    render_html,
    render_text,
)
from smtp_policy.maillog.tally import Tally
from smtp_policy.maillog.tracker import SeenReply
from tests.helpers import SAMPLES

SAMPLE = SAMPLES / "postfix-3.7-maillog-sample.log"
#: A log written so that every section's truth is known (tests/samples/README.md).
SECTIONS = SAMPLES / "report-sections.log"


def build(path: Path, year: int | None = None) -> dict[str, Any]:
    """The report of one file, as ``smtp-policy report`` builds it."""
    builder = ReportBuilder()
    builder.add_all(replay([str(path)], default_knowledge(), year=year, tap=builder.add_line))
    return builder.result()


@pytest.fixture(name="data", scope="module")
def _data() -> dict[str, Any]:
    return build(SAMPLE)


@pytest.fixture(name="sections", scope="module")
def _sections() -> dict[str, Any]:
    return build(SECTIONS, year=2026)


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


def test_sample_matches_pflogsumm(data: dict[str, Any]) -> None:
    """Where both count the same thing, the numbers are pflogsumm's on the same file
    (pflogsumm 1.1.5, Debian 12; its rejected count misses the 14 milter rejects)."""
    totals = data["totals"]
    assert totals["bytes_received"] == 133159
    assert totals["bytes_delivered"] == 256899
    assert (totals["senders"], totals["sending_domains"]) == (349, 1)
    assert (totals["recipients"], totals["recipient_domains"]) == (372, 3)
    assert (totals["deferred_messages"], totals["deferred"]) == (62, 63)
    assert totals["generated"] == count(r"sender non-delivery notification: ")
    rows = {d["domain"]: (d["sent"], d["bytes"], d["deferrals"]) for d in data["domain_deliveries"]}
    assert rows == {
        "remote.test": (290, 111960, 43),
        "sender.test": (57, 135348, 0),
        "sink.test": (25, 9591, 0),
        "down.test": (0, 0, 20),
    }
    received = [d for d in data["top_sending_domains"] if d["domain"] == "sender.test"]
    assert received == [{"domain": "sender.test", "messages": 349, "bytes": 133159}]


def test_report_counts_as_the_tally(data: dict[str, Any]) -> None:
    """One definition of received (pflogsumm's: a queue id and a client) serves the report
    and the tally: 373 on the sample, of which the 24 a milter refused at end-of-message are
    also shown as refused whole; notices are generated in both."""
    tally = Tally()
    for event in replay([str(SAMPLE)], default_knowledge(), year=2026):
        tally.add(event)
    counted = tally.totals()
    totals = data["totals"]
    assert (totals["received"], totals["generated"]) == (counted["received"], counted["generated"])
    assert totals["received"] == 373
    assert totals["rejected_messages"] == count(r"milter-reject: END-OF-MESSAGE") == 24
    assert sum(day["received"] for day in data["per_day"]) == totals["received"]
    assert sum(hour["received"] for hour in data["per_hour"]) == totals["received"]


def test_sections_totals(sections: dict[str, Any]) -> None:
    """Every total of the crafted log, by hand: a bounce notice is generated, not received; hold,
    discard and reject_warning are not rejects; a forward is not a delivery."""
    assert sections["totals"] == {
        "received": 3,
        "delivered": 3,
        "deferred": 1,
        "bounced": 1,
        "rejected": 1,
        "warned": 1,
        "rejected_messages": 0,
        "deferred_messages": 1,
        "expired": 0,
        "forwarded": 1,
        "held": 1,
        "discarded": 1,
        "generated": 1,
        "bytes_received": 3000,
        "bytes_delivered": 5000,
        "senders": 3,
        "sending_domains": 3,
        "recipients": 3,
        "recipient_domains": 3,
    }


def test_traffic_per_hour_and_day(sections: dict[str, Any]) -> None:
    """Per hour of the day (24 rows, in the log's own clock) and per date."""
    hours = sections["per_hour"]
    assert [h["hour"] for h in hours] == list(range(24))
    busy = {h["hour"]: h for h in hours if any(h[k] for k in h if k != "hour")}
    assert set(busy) == {8, 9, 10}
    assert busy[9] == {
        "hour": 9, "received": 1, "delivered": 2, "deferred": 1, "bounced": 0, "rejected": 0
    }  # fmt: skip
    assert busy[8]["rejected"] == 1 and busy[10]["bounced"] == 1
    assert [(d["date"], d["received"], d["rejected"]) for d in sections["per_day"]] == [
        ("2026-03-01", 2, 0),
        ("2026-03-02", 0, 1),
        ("2026-03-03", 1, 0),
    ]


def test_domain_deliveries_with_delays(sections: dict[str, Any]) -> None:
    """Sent, bytes, deferrals, average and maximal delay per recipient domain."""
    rows = {d["domain"]: d for d in sections["domain_deliveries"]}
    assert rows["slow.example"] == {
        "domain": "slow.example",
        "sent": 1,
        "bytes": 1000,
        "deferrals": 1,
        "average_delay": 602.0,
        "max_delay": 602.0,
    }
    assert rows["remote.example"]["average_delay"] == 1.5
    assert sections["deferral_domains"] == [
        {"domain": "slow.example", "deferrals": 1, "reasons": {"greylisting": 1}}
    ]
    assert sections["bounce_domains"] == [
        {"domain": "remote.example", "bounces": 1, "reasons": {"user_unknown": 1}}
    ]


def test_top_senders_and_recipients(sections: dict[str, Any]) -> None:
    """Addresses without angle brackets, with message counts (and bytes for senders)."""
    senders = {r["sender"]: r for r in sections["top_senders"]}
    assert senders["dave@example.net"] == {
        "sender": "dave@example.net",
        "messages": 1,
        "bytes": 2000,
    }
    assert "" not in senders  # the bounce notice's null sender is not a sender
    recipients = {r["recipient"] for r in sections["top_recipients"]}
    assert recipients == {"bob@remote.example", "carol@slow.example", "dave@example.net"}


def test_warnings_fatal_and_panic(sections: dict[str, Any]) -> None:
    """Lines grouped by program and text, addresses and numbers folded."""
    problems = sections["problems"]
    assert {k: v["count"] for k, v in problems.items()} == {
        "warning": 5,
        "error": 0,
        "fatal": 1,
        "panic": 1,
    }
    top = problems["warning"]["top"][0]
    assert top["count"] == 2 and top["program"] == "postfix/smtpd"
    messages = [p["message"] for p in problems["warning"]["top"]]
    assert (
        "hostname nowhere.example does not resolve to address address: Name or service not known"
        in messages
    )
    assert problems["panic"]["top"] == [
        {
            "program": "postfix/master",
            "message": "myfree: corrupt or unallocated memory block",
            "count": 1,
        }
    ]


def test_sasl_failures_and_logins(sections: dict[str, Any]) -> None:
    """Failed logins by method and client; messages sent after a login, by method."""
    assert sections["sasl"] == {
        "failures": 3,
        "failures_by_method": {"LOGIN": 2, "PLAIN": 1},
        "top_failing_clients": [{"client": "bad.example[203.0.113.9]", "failures": 3}],
        "logins": 1,
        "logins_by_method": {"PLAIN": 1},
    }


def test_tls_use(sections: dict[str, Any]) -> None:
    """TLS connections each way, by protocol and trust; inbound against all connections."""
    tls = sections["tls"]
    assert tls["inbound"] == {
        "connections": 1,
        "by_protocol": {"TLSv1.3": 1},
        "by_trust": {"Anonymous": 1},
        "of_connections": 4,
    }
    assert tls["outbound"]["connections"] == 2
    assert tls["outbound"]["by_protocol"] == {"TLSv1.3": 1, "TLSv1.2": 1}
    assert tls["ciphers"]["TLS_AES_256_GCM_SHA384"] == 2


def test_text_has_every_section(sections: dict[str, Any]) -> None:
    """Every section title and every total's label, pflogsumm's order."""
    text = render_text(sections)
    for title in TITLES.values():
        if title != TITLES["timeline"]:  # a chart: HTML only
            assert f"\n{title}\n" in text, title
    labels = [label for label, _, _ in TOTAL_ROWS]
    positions = [text.index(f"  {label} ") for label in labels]
    assert positions == sorted(positions)
    assert "Failed logins:             3  LOGIN 2, PLAIN 1" in text
    assert not any(line != line.rstrip() for line in text.splitlines())


def test_html_sections_labels_and_axes(sections: dict[str, Any]) -> None:
    """One <section> per part, human labels only, and a chart with two labelled axes and one
    series per direction."""
    page = render_html(sections)
    for key, title in TITLES.items():
        assert f'<section id="{key}"><h2>{title}</h2>' in page.replace("&#x27;", "'"), key
    assert "deferred_messages" not in page and "bytes_received" not in page
    for label, _, _ in TOTAL_ROWS:
        assert f"<th>{label}</th>" in page
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert "Time (UTC" in svg and "Refusals per " in svg
    assert svg.count('fill="#e15759"') >= 1 and svg.count('fill="#4e79a7"') >= 1
    assert (
        "Upstream: we refused clients" in page and "Downstream: remote servers refused us" in page
    )


def test_html_examples_wrap_at_spaces_and_are_cut_with_a_title() -> None:
    """A long reply is cut at a space with an ellipsis, the whole text in its title; a long
    token may break after punctuation only; no CSS breaks words anywhere."""
    data = ReportBuilder().result()
    url = "https://postgrey.example/help/greylisting/why-your-message-was-delayed.html"
    long = "450 4.2.0 <a@b.example>: Recipient address rejected: Greylisted, see " + url
    long += " (in reply to RCPT TO command)" + " and more words" * 10
    data["reasons"]["downstream"] = [
        {"reason": "greylisting", "count": 1, "summary": "s", "example": long,
         "code": 450, "enhanced": "4.2.0"}
    ]  # fmt: skip
    page = render_html(data)
    example = re.search(r'<div class="ex" title="([^"]*)">(.*?)</div>', page)
    assert example is not None
    assert example[1] == long.replace("<", "&lt;").replace(">", "&gt;")
    shown = example[2]
    assert shown.endswith("…") and not shown.endswith(" …")
    assert "https:<wbr>/<wbr>/<wbr>postgrey.<wbr>example/<wbr>help" in shown
    assert "why-your-message-was-delayed.<wbr>html" in shown  # whole words between the breaks
    assert "<wbr>" not in shown.split("https")[0]  # short words: plain spaces only
    assert "break-all" not in page and "anywhere" not in page


def test_cut_at_a_space() -> None:
    """Text is cut at the last space before the limit, never inside a word."""
    from smtp_policy.maillog.report import _cut

    assert _cut("short", 10) == "short"
    assert _cut("alpha beta gamma delta", 15) == "alpha beta…"
    assert _cut("x" * 40, 10) == "x" * 9 + "…"


@pytest.mark.parametrize(("path", "year"), [(SAMPLE, 2026), (SECTIONS, 2026)])
def test_tracked_counts_as_the_events(path: Path, year: int) -> None:
    """``report`` counts the tracker's replies and messages without making events
    (``add_tracked``): the very report the events give (``add_all``)."""
    builder = ReportBuilder()
    tracked = replay_tracked([str(path)], default_knowledge(), year=year, tap=builder.add_line)
    assert builder.add_tracked(tracked).result() == build(path, year)


@pytest.mark.parametrize(("path", "year"), [(SAMPLE, 2026), (SECTIONS, 2026)])
def test_what_report_skips_changes_nothing(path: Path, year: int) -> None:
    """``report`` gives ``add_line`` only the kinds it reads (``LINE_KINDS``) and has the
    tracker keep no reply in its message records (``keep_replies=False``): the same report as
    from every line and the whole records."""
    builder = ReportBuilder()
    tracked = replay_tracked(
        [str(path)],
        default_knowledge(),
        year=year,
        tap=builder.add_line,
        tap_kinds=LINE_KINDS,
        keep_replies=False,
    )
    assert builder.add_tracked(tracked).result() == build(path, year)


def test_tracked_reads_as_its_event() -> None:
    """Every value the report reads of a reply or a finished message is the one its event
    carries."""
    for tracked in replay_tracked([str(SAMPLE)], default_knowledge(), year=2026):
        event = tracked.to_event()
        assert tracked.ts == event.ts and tracked.queue_id == event.queue_id
        assert tracked.sender == event.sender
        if isinstance(tracked, SeenReply):
            extra = event.extra
            assert tracked.direction == (event.direction.value if event.direction else None)
            assert tracked.detail == bool(extra.get("detail"))
            assert (tracked.status, tracked.action) == (extra.get("status"), extra.get("action"))
            assert tracked.delay == extra.get("delay")
            assert (tracked.klass, tracked.reason) == (event.klass, event.reason)
            assert (tracked.code, tracked.enhanced) == (event.code, event.enhanced)
            assert (tracked.text, tracked.summary) == (event.text, event.summary)
            assert tracked.recipient == event.recipient
            continue
        record = event.message
        assert record is not None
        assert (tracked.status, tracked.origin) == (record.status, record.origin)
        assert (tracked.size, tracked.notification_for) == (record.size, record.notification_for)
        assert tracked.received_at == datetime.fromisoformat(record.received)
        assert tracked.recipient_statuses() == [(r.recipient, r.status) for r in record.recipients]


@pytest.mark.parametrize("zone", ["UTC0", "IST-5:30", "EST+5"])
def test_traffic_is_in_the_logs_clock_whatever_the_zone(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every traffic column counts in the log's own clock: on a host east or west of UTC the
    hours and dates are those of the log's lines, "received" included (it came from the
    message record's UTC time and was shifted by the host's offset)."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        sections = build(SECTIONS, year=2026)
    finally:
        monkeypatch.undo()
        time.tzset()
    busy = {
        h["hour"]: h for h in sections["per_hour"] if any(v for k, v in h.items() if k != "hour")
    }
    assert set(busy) == {8, 9, 10}
    assert busy[9]["received"] == 1
    assert [(d["date"], d["received"]) for d in sections["per_day"]] == [
        ("2026-03-01", 2),
        ("2026-03-02", 0),
        ("2026-03-03", 1),
    ]
