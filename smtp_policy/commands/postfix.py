"""Postfix helpers. "bounce-template" renders a bounce(5) file from the [bounce] section of the
configuration (language, contact, help link, wording); enable it with
"bounce_template_file = /etc/postfix/bounce.cf" in main.cf and check it with
"postconf -b /etc/postfix/bounce.cf".
"""

from __future__ import annotations

import argparse
import sys

HELP = "Postfix helpers (bounce-template)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the postfix helper subcommands."""
    sub = parser.add_subparsers(dest="postfix_command", required=True, metavar="HELPER")
    bounce = sub.add_parser(
        "bounce-template",
        help="print a bounce(5) template file",
        description="Print Postfix's bounce(5) template file, written as [bounce] says.",
    )
    bounce.add_argument("--config", metavar="FILE", help="read the shipped defaults and FILE only")
    bounce.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")


def run(args: argparse.Namespace) -> int:
    """Render and print (or write) the requested file."""
    from smtp_policy.config import load_config
    from smtp_policy.core.bounce import bounce_file
    from smtp_policy.data.i18n import bounce_words

    bounce = load_config(args.config).bounce
    rendered = bounce_file(bounce, bounce_words(bounce.language))
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(rendered)
        except OSError as exc:
            print(f"smtp-policy postfix: {args.output}: {exc.strerror}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(rendered)
    return 0
