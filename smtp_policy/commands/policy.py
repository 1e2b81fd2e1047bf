"""Serve Postfix SMTPD access policy requests: record each one, apply the [[rules]] of the
configuration, and answer DUNNO when no rule decides.

Wire it in with a fail-open default, for example:
  smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination,
      check_policy_service { inet:127.0.0.1:8897, timeout=5s, default_action=DUNNO }
A rule with action "accept" answers DUNNO too: a policy OK would skip the restrictions after
it, and a logging tap must never open a relay.
"""

from __future__ import annotations

import argparse

from smtp_policy.commands._serve import add_daemon_options, serve
from smtp_policy.core.events import Source

HELP = "serve Postfix policy delegation requests (record every request, apply rules)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the policy options."""
    add_daemon_options(parser, "policy")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT."""
    from smtp_policy.adapters.policy_server import PolicyService
    from smtp_policy.data import default_knowledge

    return serve(
        args,
        Source.POLICY,
        lambda config: config.policy.listen,
        lambda events, config: PolicyService(events, default_knowledge(), config),
    )
