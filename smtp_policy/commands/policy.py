"""Serve Postfix SMTPD access policy requests: record each one, answer DUNNO unless a rule
decides.

Wire it in with a fail-open default, for example:
  smtpd_recipient_restrictions = ..., reject_unauth_destination,
      check_policy_service { inet:127.0.0.1:8897, timeout=5s, default_action=DUNNO }
"""

from __future__ import annotations

import argparse

from .serve import add_daemon_options, serve

HELP = "serve Postfix policy delegation requests (record every request)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the policy options."""
    add_daemon_options(parser, default_listen="inet:127.0.0.1:8897")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT."""
    from ..adapters.policy_server import PolicyService

    return serve(args, "policy", lambda events: PolicyService(events).handle)
