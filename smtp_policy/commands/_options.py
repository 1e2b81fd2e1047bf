"""Options several subcommands share, spelt and explained once."""

from __future__ import annotations

import argparse
import ipaddress

CONFIG_HELP = (
    "read the shipped defaults and FILE only "
    "(default: /etc/smtp-policy/config.toml and conf.d/*.toml)"
)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: the configuration every daemon and dry run reads."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)


def ip_address(text: str) -> str:
    """An argparse type: an IPv4 or IPv6 address (brackets allowed), in its canonical form."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None
