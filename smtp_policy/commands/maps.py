"""Serve Postfix socketmap lookups: friendlier reject footers (map "footer") and DSN texts
(map "dsn").

Wire it into main.cf with, for example:
  smtpd_reject_footer_maps = socketmap:inet:127.0.0.1:8896:footer
  smtp_delivery_status_filter = socketmap:inet:127.0.0.1:8896:dsn
Both hooks fail open: when this server is down, Postfix rejects and delivers as without it.
Test a lookup with: postmap -q "550 5.1.1 User unknown" socketmap:inet:127.0.0.1:8896:footer
Texts come from [texts] in the configuration (footers: the "external" texts, read by
connecting clients; DSNs: the "internal" texts, read by your own senders).
"""

from __future__ import annotations

import argparse

from smtp_policy.commands._serve import add_daemon_options, serve
from smtp_policy.core.events import Source

HELP = "serve Postfix socketmap lookups (reject footers, DSN texts)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the maps options."""
    add_daemon_options(parser, "maps")
    parser.add_argument(
        "--same-line",
        action="store_true",
        default=None,
        help="continue the reply's last line (\\c) instead of adding lines ([maps] same_line)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT."""
    from smtp_policy.adapters.maps_server import MapsService
    from smtp_policy.data import default_knowledge

    return serve(
        args,
        Source.MAPS,
        lambda config: config.maps.listen,
        lambda events, config: MapsService(
            default_knowledge(), events, config, same_line=args.same_line
        ),
    )
