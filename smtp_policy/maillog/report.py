"""A pflogsumm-like, reason-aware summary of log events (pure: events in, data and text out).

:class:`ReportBuilder` consumes the events ``smtp-policy follow`` writes (``reply`` and
``message``) one at a time, keeping only counters, so a report over a year of logs needs as
much memory as one over a day. What is counted:

- *received*: messages that entered the queue (``message`` records not rejected at the door);
- *delivered*, *bounced*: per-recipient delivery results (``status=sent``/``bounced``), as
  pflogsumm counts them; *deferred*: deferral lines, and the distinct messages deferred;
- *rejected*: upstream rejects (smtpd, postscreen, milter, Sendmail rulesets); a
  ``reject_warning`` is counted as *warned*, because the client was not rejected;
- *top reasons*, per direction: every non-success reply by its reason, with the first reply
  seen as an example and the core's one-line explanation;
- *deferrals by remote domain*: each recipient domain's deferrals, by reason;
- *reasons over time*: non-success replies per time bucket (sized for at most 48 bars).

Renderers turn :meth:`ReportBuilder.result` into text, JSON-ready data, or one self-contained
HTML page (inline CSS and SVG, no external reference).
"""

from __future__ import annotations

import collections
import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from smtp_policy.core.events import Event, EventKind
from smtp_policy.core.sanitize import printable

#: Candidate widths of one bar in "reasons over time", smallest first (seconds).
BUCKET_WIDTHS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)
MAX_BARS = 48
_FAILURE_CLASSES = frozenset({"transient", "permanent", "unknown"})
_NOT_RECEIVED = frozenset({"rejected", "not_queued"})
_WARN_ACTIONS = frozenset({"reject_warning", "warn"})
_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f")


@dataclass(slots=True)
class _Reason:
    count: int = 0
    example: str | None = None
    summary: str | None = None
    code: int | None = None
    enhanced: str | None = None


class ReportBuilder:
    """Counts events; :meth:`result` gives the report as plain data."""

    def __init__(self, *, top: int = 10) -> None:
        self.top = top
        self.totals: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.reasons: dict[str, dict[str, _Reason]] = {"upstream": {}, "downstream": {}}
        self.domains: dict[str, collections.Counter[str]] = {}
        self.minutes: collections.Counter[tuple[int, str]] = collections.Counter()
        self._deferred_ids: set[str] = set()
        self.first: datetime | None = None
        self.last: datetime | None = None

    def add_all(self, events: Iterable[Event]) -> ReportBuilder:
        """Add every event; return self."""
        for event in events:
            self.add(event)
        return self

    def add(self, event: Event) -> None:
        """Count one event (events other than reply and message are ignored)."""
        if event.event == EventKind.REPLY:
            self._span(event.ts)
            self._reply(event)
        elif event.event == EventKind.MESSAGE:
            self._span(event.ts)
            status = event.message.status if event.message is not None else "unknown"
            self.statuses[status] += 1
            if status not in _NOT_RECEIVED:
                self.totals["received"] += 1

    def _span(self, ts: datetime) -> None:
        if self.first is None or ts < self.first:
            self.first = ts
        if self.last is None or ts > self.last:
            self.last = ts

    def _reply(self, event: Event) -> None:
        extra = event.extra
        status = extra.get("status")
        direction = event.direction.value if event.direction else "downstream"
        if direction == "upstream":
            if extra.get("action") in _WARN_ACTIONS:
                self.totals["warned"] += 1
            elif event.klass != "success":
                self.totals["rejected"] += 1
        elif status == "sent":
            self.totals["delivered"] += 1
        elif status == "bounced":
            self.totals["bounced"] += 1
        elif status == "deferred":
            self.totals["deferred"] += 1
            if event.queue_id:
                self._deferred_ids.add(event.queue_id)
            self._domain(event)
        if event.klass in _FAILURE_CLASSES:
            self._reason(direction, event)

    def _reason(self, direction: str, event: Event) -> None:
        reason = event.reason or "undefined"
        stat = self.reasons[direction].setdefault(reason, _Reason())
        stat.count += 1
        if stat.example is None:
            stat.example, stat.summary = event.text, event.summary
            stat.code, stat.enhanced = event.code, event.enhanced
        self.minutes[(int(event.ts.timestamp()) // 60 * 60, reason)] += 1

    def _domain(self, event: Event) -> None:
        rcpt = (event.recipient or "").strip("<>")
        domain = rcpt.rpartition("@")[2].lower() if "@" in rcpt else "(none)"
        self.domains.setdefault(domain, collections.Counter())[event.reason or "undefined"] += 1

    def result(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        totals = {
            k: self.totals.get(k, 0)
            for k in ("received", "delivered", "deferred", "bounced", "rejected", "warned")
        }
        totals["deferred_messages"] = len(self._deferred_ids)
        totals["expired"] = self.statuses.get("expired", 0)
        return {
            "period": {"first": _iso(self.first), "last": _iso(self.last)},
            "totals": totals,
            "messages": dict(self.statuses.most_common()),
            "reasons": {d: self._top_reasons(d) for d in ("upstream", "downstream")},
            "deferral_domains": self._top_domains(),
            "timeline": self._timeline(),
        }

    def _top_reasons(self, direction: str) -> list[dict[str, Any]]:
        ranked = sorted(self.reasons[direction].items(), key=lambda kv: (-kv[1].count, kv[0]))
        return [
            {
                "reason": reason,
                "count": stat.count,
                "summary": stat.summary,
                "example": stat.example,
                "code": stat.code,
                "enhanced": stat.enhanced,
            }
            for reason, stat in ranked[: self.top]
        ]

    def _top_domains(self) -> list[dict[str, Any]]:
        ranked = sorted(self.domains.items(), key=lambda kv: (-kv[1].total(), kv[0]))
        return [
            {"domain": d, "deferrals": c.total(), "reasons": dict(c.most_common())}
            for d, c in ranked[: self.top]
        ]

    def _timeline(self) -> dict[str, Any]:
        if not self.minutes:
            return {"bucket_seconds": 60, "reasons": [], "buckets": []}
        start = min(m for m, _ in self.minutes)
        end = max(m for m, _ in self.minutes)
        width = next((w for w in BUCKET_WIDTHS if (end - start) // w < MAX_BARS), BUCKET_WIDTHS[-1])
        totals: collections.Counter[str] = collections.Counter()
        bins: dict[int, collections.Counter[str]] = {}
        for (minute, reason), n in self.minutes.items():
            totals[reason] += n
            bins.setdefault(minute // width * width, collections.Counter())[reason] += n
        return {
            "bucket_seconds": width,
            "reasons": [r for r, _ in totals.most_common()],
            "buckets": [
                {"start": _iso(datetime.fromtimestamp(b, UTC)), "counts": dict(bins[b])}
                for b in sorted(bins)
            ],
        }


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- text ---------------------------------------------------------------------------------------


def render_text(data: Mapping[str, Any]) -> str:
    """The report as plain text, pflogsumm style; what the logs said is shown with its control
    characters escaped (:func:`~smtp_policy.core.sanitize.printable`), one line per line."""
    t = data["totals"]
    period = data["period"]
    out = [f"Mail log report, {period['first'] or '-'} to {period['last'] or '-'}", ""]
    out += ["Totals"]
    rows = [
        ("received", t["received"], "messages queued"),
        ("delivered", t["delivered"], "recipient deliveries"),
        ("deferred", t["deferred"], f"deferrals, {t['deferred_messages']} messages"),
        ("bounced", t["bounced"], "recipients"),
        ("rejected", t["rejected"], f"upstream rejects, plus {t['warned']} warnings"),
        ("expired", t["expired"], "messages"),
    ]
    out += [f"  {name:<10} {n:>9,}  {what}" for name, n, what in rows]
    for direction, title in (
        ("upstream", "Upstream: why we refused clients"),
        ("downstream", "Downstream: why remote servers refused us"),
    ):
        out += ["", title]
        out += _text_reasons(data["reasons"][direction])
    out += ["", "Deferrals by remote domain"]
    domains = data["deferral_domains"]
    out += [
        f"  {d['deferrals']:>9,}  {d['domain']}  "
        + ", ".join(f"{r} {n}" for r, n in d["reasons"].items())
        for d in domains
    ] or ["  (none)"]
    return "\n".join(printable(line) for line in out) + "\n"


def _text_reasons(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    out = []
    for row in rows:
        out.append(f"  {row['count']:>9,}  {row['reason']:<18} {row['summary'] or ''}")
        if row["example"]:
            out.append(f"  {'':>9}  e.g. {_cut(row['example'], 110)}")
    return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# -- HTML ---------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.8em}
table{border-collapse:collapse;width:100%}td,th{padding:.25em .6em;text-align:left;
vertical-align:top;border-bottom:1px solid #ddd}td.n{text-align:right;white-space:nowrap}
.ex{color:#555;font-family:ui-monospace,monospace;font-size:.85em;word-break:break-all}
.bar{background:#4e79a7;height:.8em;display:inline-block}.legend span{margin-right:1em}
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em}
"""


def render_html(data: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, nothing external)."""
    period = data["period"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Mail log report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Mail log report</h1>",
        f"<p>{_e(period['first'] or '-')} to {_e(period['last'] or '-')}</p>",
        "<h2>Totals</h2>",
        _html_totals(data["totals"]),
        "<h2>Reasons over time</h2>",
        _html_timeline(data["timeline"]),
        "<h2>Upstream: why we refused clients</h2>",
        _html_reasons(data["reasons"]["upstream"]),
        "<h2>Downstream: why remote servers refused us</h2>",
        _html_reasons(data["reasons"]["downstream"]),
        "<h2>Deferrals by remote domain</h2>",
        _html_domains(data["deferral_domains"]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _html_totals(totals: Mapping[str, int]) -> str:
    rows = "".join(f'<tr><th>{_e(k)}</th><td class="n">{v:,}</td></tr>' for k, v in totals.items())
    return f"<table>{rows}</table>"


def _html_reasons(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>None.</p>"
    top = max(r["count"] for r in rows)
    body = "".join(
        "<tr>"
        f'<td class="n">{r["count"]:,}</td>'
        f'<td><span class="bar" style="width:{max(1, round(8 * r["count"] / top))}em"></span></td>'
        f"<td><b>{_e(r['reason'])}</b><br>{_e(r['summary'])}"
        f'<div class="ex">{_e(r["example"])}</div></td>'
        "</tr>"
        for r in rows
    )
    return f"<table>{body}</table>"


def _html_domains(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>None.</p>"
    body = "".join(
        f'<tr><td class="n">{d["deferrals"]:,}</td><td>{_e(d["domain"])}</td><td>'
        + _e(", ".join(f"{r} {n}" for r, n in d["reasons"].items()))
        + "</td></tr>"
        for d in rows
    )
    return f"<table>{body}</table>"


def _html_timeline(timeline: Mapping[str, Any]) -> str:
    buckets = timeline["buckets"]
    if not buckets:
        return "<p>No failures.</p>"
    reasons = timeline["reasons"][: len(_PALETTE) - 1]
    colour = {r: _PALETTE[i] for i, r in enumerate(reasons)}
    width, height, gap = 720, 200, 2
    bar = max(2, width // len(buckets) - gap)
    peak = max(sum(b["counts"].values()) for b in buckets)
    rects = []
    for i, b in enumerate(buckets):
        y = height
        for reason, n in _stack(b["counts"], reasons):
            h = max(1, round(height * n / peak))
            y -= h
            fill = colour.get(reason, _PALETTE[-1])
            rects.append(
                f'<rect x="{i * (bar + gap)}" y="{y}" width="{bar}" height="{h}" fill="{fill}">'
                f"<title>{_e(b['start'])} {_e(reason)}: {n}</title></rect>"
            )
    legend = "".join(
        f'<span><i class="sw" style="background:{colour.get(r, _PALETTE[-1])}"></i>{_e(r)}</span>'
        for r in [*reasons, *(["other"] if len(timeline["reasons"]) > len(reasons) else [])]
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="non-success replies over time">{"".join(rects)}</svg>'
    )
    first, last = _e(buckets[0]["start"]), _e(buckets[-1]["start"])
    seconds = timeline["bucket_seconds"]
    caption = f"<p>{first} to {last}, one bar per {seconds // 60} min; peak {peak:,}</p>"
    return f'{svg}<div class="legend">{legend}</div>{caption}'


def _stack(counts: Mapping[str, int], reasons: list[str]) -> list[tuple[str, int]]:
    out = [(r, counts[r]) for r in reasons if counts.get(r)]
    other = sum(n for r, n in counts.items() if r not in reasons)
    return [*out, ("other", other)] if other else out
