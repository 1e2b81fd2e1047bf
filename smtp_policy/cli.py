"""The ``smtp-policy`` command: a thin dispatcher over ``smtp_policy.commands``.

Each subcommand lives in its own module with ``HELP``, ``register(parser)`` and
``run(args) -> int``; heavy imports (pymilter, asyncio servers) stay inside ``run`` so that
``smtp-policy explain`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from smtp_policy import __version__
from smtp_policy.core.errors import SmtpPolicyError

#: Subcommand name -> module. Order is the order of ``--help``.
COMMANDS = {
    "explain": "smtp_policy.commands.explain",
    "preview": "smtp_policy.commands.preview",
    "rules": "smtp_policy.commands.rules",
    "demo": "smtp_policy.commands.demo",
    "maps": "smtp_policy.commands.maps",
    "policy": "smtp_policy.commands.policy",
    "follow": "smtp_policy.commands.follow",
    "report": "smtp_policy.commands.report",
    "trace": "smtp_policy.commands.trace",
    "postfix": "smtp_policy.commands.postfix",
    "check-config": "smtp_policy.commands.check_config",
    "postfix-config": "smtp_policy.commands.postfix_config",
    "milter": "smtp_policy.commands.milter",
    "proxy": "smtp_policy.commands.proxy",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser, with every subcommand registered, or with ``only`` that one.

    Registering a subcommand imports its module; ``main`` asks for the one named on the
    command line, so ``smtp-policy explain`` imports no daemon. Parsing that command's
    arguments gives the same result and the same messages either way.
    """
    parser = argparse.ArgumentParser(
        prog="smtp-policy",
        description="Record, explain and rewrite SMTP reply codes beside Postfix or Sendmail.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(module_name)
        module.register(sub.add_parser(name, help=module.HELP, description=module.__doc__))
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` starts with, or None (no command, or an option such as
    ``--help`` first, which needs every subcommand's parser)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; errors become one line on stderr and a non-zero exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(chosen_command(arguments))
    args = parser.parse_args(arguments)
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args))
    except SmtpPolicyError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"smtp-policy {args.command}: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head); nothing more to say
        return 0
