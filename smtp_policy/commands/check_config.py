"""Check the configuration and print every problem, one per line: FILE:LINE: key.path: message.

Reads the shipped defaults, then /etc/smtp-policy/config.toml and /etc/smtp-policy/conf.d/*.toml
in name order; with FILE, the defaults and FILE only. Exits 0 and prints "OK: <files read>"
(plus notices about what the MTAs let you change) when the configuration can be used, 1 when
it cannot. Daemons reloaded with SIGHUP keep their running configuration in that case.
Warnings ("warning: FILE:LINE: key.path: message": an example domain senders would read, a
placeholder its hook never fills) are printed either way and do not change the exit status.
"""

from __future__ import annotations

import argparse

from smtp_policy.config import Config, check_config
from smtp_policy.core.policy import REPLY_ACTIONS
from smtp_policy.core.stages import Stage
from smtp_policy.core.texts import POSTFIX_MACROS, SENDMAIL_MACROS, mta_greeting

HELP = "check the configuration files and print every problem and warning"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the check-config options."""
    parser.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help="check the shipped defaults and FILE only "
        "(default: /etc/smtp-policy/config.toml and conf.d/*.toml)",
    )


def run(args: argparse.Namespace) -> int:
    """Check, print the problems or "OK", and return the exit status."""
    report = check_config(args.file)
    if report.config is None:
        for problem in report.problems:
            print(problem)
        _print_warnings(report.warnings)
        return 1
    read = [str(s.path) if s.path is not None else "shipped defaults" for s in report.sources]
    print("OK: " + ", ".join(read))
    _print_warnings(report.warnings)
    for notice in notices(report.config):
        print(f"notice: {notice}")
    return 0


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}")


def notices(config: Config) -> list[str]:
    """What the admin should know about where configured texts can reach a client."""
    return [
        _goodbye_notice(),
        *_greeting_notices(config.banner.greeting),
        *_rule_notices(config),
    ]


def _goodbye_notice() -> str:
    return (
        "banner.goodbye: only the smtp-policy proxy can send this 221 text; Postfix "
        '("221 2.0.0 Bye") and Sendmail ("221 2.0.0 <host> closing connection") hard-code '
        "their 221 reply, and no milter, policy service or reject footer can change it"
    )


def _greeting_notices(template: str) -> list[str]:
    postfix = mta_greeting(template, POSTFIX_MACROS)
    sendmail = mta_greeting(template, SENDMAIL_MACROS)
    return [
        "banner.greeting: a milter cannot change the 220 greeting; the smtp-policy proxy "
        "sends this text, Postfix and Sendmail need their own setting",
        f"banner.greeting: Postfix main.cf: smtpd_banner = {postfix}"
        if postfix
        else "banner.greeting: Postfix's smtpd_banner cannot say this "
        "(one line; of the placeholders only {hostname}, as $myhostname)",
        f"banner.greeting: sendmail.mc: define(`confSMTP_LOGIN_MSG', `{sendmail}')"
        if sendmail
        else "banner.greeting: Sendmail's confSMTP_LOGIN_MSG cannot say this "
        "(one line; of the placeholders only {hostname} as $j and {date} as $b)",
    ]


def _rule_notices(config: Config) -> list[str]:
    return [
        f"rules {rule.name!r}: at stage connect Postfix answers a milter's {rule.action.value} "
        "with its own fixed text (554/421 <host> ...); the policy service and the proxy "
        "send this rule's text"
        for rule in config.rules
        if rule.stage is Stage.CONNECT and rule.action in REPLY_ACTIONS
    ]
