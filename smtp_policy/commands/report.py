"""Summarise mail logs like pflogsumm, but by reason.

pflogsumm's sections (grand totals with bytes, senders and recipients; traffic per day and per
hour; deliveries, deferrals and bounces per recipient domain; top senders and recipients;
warnings, fatal and panic lines; SASL; TLS), and the top reasons upstream (why your MTA refused
clients) and downstream (why remote servers refused your MTA), each with an example reply and a
one-line explanation. Prints text, or --json (keys in docs/report.md), or --html: one
self-contained page with a chart of the refusals over time per direction.
"""

from __future__ import annotations

import argparse
import sys

from smtp_policy.core.sanitize import json_text
from smtp_policy.maillog.report import LINE_KINDS, ReportBuilder, render_html, render_text

HELP = "summarise mail logs by reason (text, --json or --html)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the report options."""
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="mail logs, oldest first: files (.gz, .bz2, .xz too), pipes, or - for stdin",
    )
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the report as JSON")
    form.add_argument("--html", action="store_true", help="print one self-contained HTML page")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows per table")
    parser.add_argument("--year", type=int, metavar="YYYY", help="year of timestamps without one")


def run(args: argparse.Namespace) -> int:
    """Read the files, aggregate, print."""
    from smtp_policy.adapters.follow.pipeline import input_problems, progress_bar, replay_tracked
    from smtp_policy.adapters.follow.tail import Notice
    from smtp_policy.data import default_knowledge

    notices: list[Notice] = []
    progress, done = progress_bar(args.files)
    builder = ReportBuilder(top=args.top)
    try:
        builder.add_tracked(
            replay_tracked(
                args.files,
                default_knowledge(),
                year=args.year,
                notices=notices,
                progress=progress,
                tap=builder.add_line,
                tap_kinds=LINE_KINDS,
                keep_replies=False,
            )
        )
    finally:
        done()
    failed = input_problems(notices, "report")
    if failed and builder.first is None:
        return failed  # not one mail log line: no report
    data = builder.result()
    if args.json:
        print(json_text(data, indent=2))
    elif args.html:
        sys.stdout.write(render_html(data))
    else:
        sys.stdout.write(render_text(data))
    return failed
