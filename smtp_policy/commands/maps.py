"""Serve Postfix socketmap lookups: friendlier reject footers (map "footer") and DSN texts
(map "dsn").

Wire it into main.cf with, for example:
  smtpd_reject_footer_maps = socketmap:inet:127.0.0.1:8896:footer
  smtp_delivery_status_filter = socketmap:inet:127.0.0.1:8896:dsn
Both hooks fail open: when this server is down, Postfix rejects and delivers as without it.
Test a lookup with: postmap -q "550 5.1.1 User unknown" socketmap:inet:127.0.0.1:8896:footer
"""

from __future__ import annotations

import argparse

from .serve import add_daemon_options, serve

HELP = "serve Postfix socketmap lookups (reject footers, DSN texts)"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the maps options."""
    add_daemon_options(parser, default_listen="inet:127.0.0.1:8896")
    parser.add_argument(
        "--same-line",
        action="store_true",
        help="continue the reply's last line (\\c) instead of adding lines",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT."""
    from ..adapters.maps_server import MapsService, MapsSettings
    from ..knowledge import default_knowledge

    def make_handler(events):  # type: ignore[no-untyped-def]
        service = MapsService(
            default_knowledge(), events, settings=MapsSettings(footer_same_line=args.same_line)
        )
        return service.handle

    return serve(args, "maps", make_handler)
