"""Postfix helpers. "bounce-template" renders a bounce(5) file with friendlier DSN texts from
the shipped defaults; enable it with "bounce_template_file = /etc/postfix/bounce.cf" in main.cf
and check it with "postconf -b /etc/postfix/bounce.cf".
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import resources

HELP = "Postfix helpers (bounce-template)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the postfix helper subcommands."""
    sub = parser.add_subparsers(dest="postfix_command", required=True, metavar="HELPER")
    bounce = sub.add_parser("bounce-template", help="print a bounce(5) template file")
    bounce.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")


def run(args: argparse.Namespace) -> int:
    """Render and print (or write) the requested file."""
    from smtp_policy.core.bounce import render_bounce_templates

    texts = tomllib.loads(
        (resources.files("smtp_policy") / "data" / "bounce.toml").read_text("utf-8")
    )
    rendered = render_bounce_templates(texts)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(rendered)
    else:
        sys.stdout.write(rendered)
    return 0
