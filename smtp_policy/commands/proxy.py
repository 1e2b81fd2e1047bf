"""Run the SMTP front proxy: clients talk to it, it talks to an inner Postfix smtpd.

Every reply a client hears passes through the proxy, so every text can be the admin's own:
the 220 greeting and the 221 goodbye ([banner]; Postfix hard-codes its 221) and every
4xx/5xx ([texts]), and every reply is recorded as a JSON event with Postfix's original text.
The proxy hands the real client to Postfix with XCLIENT, so restrictions, milters and logs
still see the client's address, port and name. It terminates STARTTLS itself (--tls-cert,
--tls-key) and passes messages through unchanged but for line ends (a bare CR or LF becomes
CRLF; only CRLF.CRLF ends a message, so no SMTP smuggling); only Postfix ever accepts mail.
Commands with control characters get 500, and AUTH is neither offered nor forwarded.

Postfix needs a second smtpd listener that trusts the proxy; print its master.cf lines with
  smtp-policy proxy --print-postfix-config
By default it is a unix socket in Postfix's public/ directory, which only root, postfix and
group postdrop can enter: give the proxy's user that group, and no other local user can talk
to the listener that believes XCLIENT (docs/proxy-security.md).
The proxy greets clients itself and opens the inner session only at their first valid
command; it counts its own error replies as Postfix does (--soft-error-limit,
--hard-error-limit, --error-sleep-time) and caps sessions per client address.
SIGTERM or SIGINT stops the proxy (open sessions are cut); SIGHUP re-reads the configuration
([banner], [texts]) for new replies and keeps the running one if the new one has problems.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ssl
import sys
from collections.abc import Iterator
from pathlib import PurePosixPath

from smtp_policy.commands._options import add_config_option
from smtp_policy.config.listen import ListenAddress
from smtp_policy.core.errors import ConfigError

HELP = "run the SMTP front proxy (custom 220/221 and reject texts, every reply recorded)"

DEFAULT_UPSTREAM = "unix:/var/spool/postfix/public/smtp-policy-proxy"
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
REPLY_EVENTS = ("each", "failures")  # the adapter's ProxySettings.reply_events


def register(parser: argparse.ArgumentParser) -> None:
    """Add the proxy options."""
    parser.add_argument(
        "--listen", metavar="inet:HOST:PORT", help="where clients connect, e.g. inet:0.0.0.0:25"
    )
    parser.add_argument(
        "--upstream",
        metavar="unix:PATH|inet:HOST:PORT",
        default=DEFAULT_UPSTREAM,
        help=f"the inner Postfix smtpd that trusts the proxy (default {DEFAULT_UPSTREAM})",
    )
    parser.add_argument(
        "--events", metavar="FILE", help="append JSON events to FILE (default: [events] output)"
    )
    add_config_option(parser)
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain for STARTTLS")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key for STARTTLS")
    parser.add_argument(
        "--max-connections", type=int, default=200, metavar="N", help="421 beyond N sessions"
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=300.0, metavar="SECONDS", help="default 300"
    )
    parser.add_argument(
        "--session-timeout", type=float, default=3600.0, metavar="SECONDS", help="default 3600"
    )
    parser.add_argument(
        "--max-per-address",
        type=int,
        default=50,
        metavar="N",
        help="421 beyond N sessions from one client address (default 50, as Postfix's anvil)",
    )
    parser.add_argument(
        "--greet-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="time for a client's first command, before Postfix is involved (default 30)",
    )
    parser.add_argument(
        "--soft-error-limit",
        type=int,
        default=10,
        metavar="N",
        help="after N of the proxy's own error replies, each waits --error-sleep-time (10)",
    )
    parser.add_argument(
        "--hard-error-limit",
        type=int,
        default=20,
        metavar="N",
        help="after N of the proxy's own error replies: 421 and close (default 20)",
    )
    parser.add_argument(
        "--error-sleep-time",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="the wait before each error reply past the soft limit (default 1)",
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="uvloop (libuv: less CPU per relayed byte) or asyncio's own; auto: uvloop if it is "
        "installed (default auto)",
    )
    parser.add_argument(
        "--reply-events",
        choices=REPLY_EVENTS,
        default="each",
        help="each: one reply event per reply (default); failures: reply events for 4xx/5xx "
        "only, and one session event per connection that counts every reply",
    )
    parser.add_argument(
        "--no-reverse-dns",
        action="store_true",
        help="send XCLIENT NAME=[UNAVAILABLE] instead of looking client names up",
    )
    parser.add_argument(
        "--print-postfix-config",
        action="store_true",
        help="print the master.cf lines of the inner listener and exit",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT (or print the Postfix configuration)."""
    upstream = upstream_option(args.upstream)
    if args.print_postfix_config:
        sys.stdout.write(postfix_config(upstream))
        return 0
    if not args.listen:
        raise ConfigError(["--listen inet:HOST:PORT is required"])
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError(["--tls-cert and --tls-key go together"])
    _check_limits(args)
    return _serve(args, upstream)


def _check_limits(args: argparse.Namespace) -> None:
    """One clear error line for a limit that makes no sense."""
    problems = [
        f"{option} must be at least 1"
        for option, value in (
            ("--max-connections", args.max_connections),
            ("--max-per-address", args.max_per_address),
            ("--hard-error-limit", args.hard_error_limit),
        )
        if value < 1
    ]
    if args.soft_error_limit < 0:
        problems.append("--soft-error-limit cannot be negative")
    for option, seconds in (
        ("--greet-timeout", args.greet_timeout),
        ("--error-sleep-time", args.error_sleep_time),
        ("--idle-timeout", args.idle_timeout),
        ("--session-timeout", args.session_timeout),
    ):
        if not 0 <= seconds < float("inf"):
            problems.append(f"{option} must be a number of seconds")
    if problems:
        raise ConfigError(problems)


def _serve(args: argparse.Namespace, upstream: ListenAddress) -> int:
    from smtp_policy.adapters.proxy import ProxyService, ProxySettings, forward_confirmed_name
    from smtp_policy.commands._serve import serve
    from smtp_policy.config import Config
    from smtp_policy.core.events import Source
    from smtp_policy.data import default_knowledge
    from smtp_policy.emit import EventWriter

    args.listen = str(tcp_option("--listen", args.listen))
    host, port = ("", 0) if upstream.is_unix else upstream.host_port
    settings = ProxySettings(
        upstream_host=host,
        upstream_port=port,
        upstream_path=upstream.path if upstream.is_unix else None,
        tls=_tls(args),
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        session_timeout=args.session_timeout,
        max_per_address=args.max_per_address,
        greet_timeout=args.greet_timeout,
        soft_error_limit=args.soft_error_limit,
        hard_error_limit=args.hard_error_limit,
        error_sleep=args.error_sleep_time,
        reply_events=args.reply_events,
    )
    resolver = _no_name if args.no_reverse_dns else forward_confirmed_name

    def make(events: EventWriter, config: Config) -> ProxyService:
        service = ProxyService(settings, default_knowledge(), events, resolver=resolver)
        service.reconfigure(config)
        gc.freeze()  # what was loaded lives as long as the daemon: the collector skips it
        return service

    with event_loop(args.event_loop):
        return serve(args, Source.PROXY, lambda config: args.listen, make)


@contextlib.contextmanager
def event_loop(choice: str) -> Iterator[str]:
    """Run the daemon's loop on uvloop (``auto`` when it is installed) or asyncio's own;
    yields the one chosen. The previous loop policy comes back afterwards."""
    if choice == "asyncio":
        yield choice
        return
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(["--event-loop uvloop: uvloop is not installed"]) from None
        yield "asyncio"
        return
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield "uvloop"
    finally:
        asyncio.set_event_loop_policy(previous)


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The STARTTLS context from --tls-cert/--tls-key, or None without them."""
    from smtp_policy.adapters.proxy import tls_context

    if not args.tls_cert:
        return None
    try:
        return tls_context(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"--tls-cert/--tls-key: {exc}"]) from None


async def _no_name(addr: str) -> str | None:
    """The resolver of --no-reverse-dns."""
    return None


def tcp_option(option: str, text: str) -> ListenAddress:
    """A TCP address option (``inet:HOST:PORT``; bare ``HOST:PORT`` works too)."""
    try:
        return ListenAddress.parse_tcp(text)
    except ConfigError as exc:
        raise ConfigError([f"{option}: {problem}" for problem in exc.problems]) from None


def upstream_option(text: str) -> ListenAddress:
    """--upstream: ``unix:$queue_directory/public/NAME`` or ``inet:HOST:PORT``."""
    try:
        upstream = ListenAddress.parse(text)
    except ConfigError as exc:
        raise ConfigError([f"--upstream: {problem}" for problem in exc.problems]) from None
    if upstream.is_unix:
        public_service_name(upstream)
    return upstream


def public_service_name(upstream: ListenAddress) -> str:
    """The master.cf name of a unix ``--upstream``: Postfix puts it in ``public/``."""
    path = PurePosixPath(upstream.path)
    if path.parent.name != "public" or not path.name:
        raise ConfigError(
            [
                f"--upstream: {upstream.path} is not in Postfix's public/ directory: a unix "
                "inner listener is $queue_directory/public/NAME (master.cf creates it there)"
            ]
        )
    return path.name


_SHARED = """\
  -o syslog_name=postfix/proxied
  -o smtpd_client_port_logging=yes
  -o smtpd_tls_security_level=none
  -o smtpd_forbid_bare_newline=normalize
  -o smtpd_forbid_bare_newline_exclusions=
"""


def postfix_config(upstream: ListenAddress) -> str:
    """The master.cf (and main.cf) lines for the inner smtpd the proxy talks to."""
    if upstream.is_unix:
        name = public_service_name(upstream)
        queue_directory = PurePosixPath(upstream.path).parent.parent
        inner = f"""\
# The listener is the unix socket {upstream.path}
# Postfix's public/ directory is mode 0710 postfix:postdrop: only root, postfix and group
# postdrop can connect.
# Give the proxy's user group postdrop (the unit's SupplementaryGroups=postdrop) and add
# nobody else to it. Postfix names a unix-socket client localhost[127.0.0.1], hence the
# XCLIENT trust below; no TCP client is trusted. Needs queue_directory = {queue_directory}
# (postconf -h queue_directory).
{name} unix n - y - - smtpd
  -o smtpd_authorized_xclient_hosts=127.0.0.1
{_SHARED}"""
    else:
        host = upstream.host
        trusted = f"[{host}]" if ":" in host else host
        inner = f"""\
# WARNING: a TCP inner listener trusts every process on this host that can connect to
# {upstream.master_cf()}: any local user can claim any client address with XCLIENT. Prefer
# the default unix socket (--upstream unix:/var/spool/postfix/public/smtp-policy-proxy).
{upstream.master_cf()} inet n - y - - smtpd
  -o smtpd_authorized_xclient_hosts={trusted}
{_SHARED}"""
    return f"""\
# --- master.cf: the inner smtpd, reachable only by smtp-policy proxy ---------------------
# The proxy sends XCLIENT ADDR/PORT/NAME, so restrictions, milters, policy services and the
# maillog see the real client; it fails closed (421) if this smtpd refuses XCLIENT.
# The proxy terminates STARTTLS itself; this hop is plaintext on this host.
{inner}#
# SMTP smuggling: the proxy ends a message only at <CR><LF>.<CR><LF> and turns every bare CR
# or LF into CRLF, so this smtpd never sees one; normalize makes it read them the same way
# anyway, for every client (the exclusions default to $mynetworks, which XCLIENT'd loopback
# clients match). It needs Postfix >= 3.9, 3.8.5, 3.7.10, 3.6.14 or 3.5.24; on 3.8.4, 3.7.9,
# 3.6.13 and 3.5.23 write "yes" instead (the same meaning there).
#
# The proxy listens where clients connect (port 25): comment out the public
# "smtp inet ... smtpd" (or "smtp inet ... postscreen") line, or move it to another address.
# Connection limits (smtpd_client_connection_count_limit, anvil) are checked against the real
# client after XCLIENT; the proxy's own address should stay in mynetworks so that its
# connections are exempt (smtpd_client_event_limit_exceptions defaults to $mynetworks).
#
# --- main.cf: nothing is required. Then: postfix reload
"""
