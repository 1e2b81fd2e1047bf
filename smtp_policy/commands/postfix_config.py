"""Wire smtp_policy into Postfix's main.cf: plan, --apply or --remove, never clobbering.

Without --apply or --remove nothing changes: it prints the plan, each parameter with its
current value, the value it would get, and why. --apply adds smtp_policy to what main.cf holds
(our milter first in smtpd_milters, our footer and DSN tables after the admin's, with
--with-policy our check_policy_service right after reject_unauth_destination), keeping a
timestamped backup of main.cf and a record (smtp-policy.applied.json) of what it changed; a
second --apply changes nothing. --remove takes out exactly what --apply added. Every read and
write goes through `postconf -c DIR`. What cannot be merged safely is refused with one line
(exit 1). docs/postfix-wiring.md tells the rules. --print-snippet prints the old fail-open
lines for an empty main.cf instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smtp_policy.adapters.postconf import (
    RECORD_NAME,
    PostconfError,
    PostfixDir,
    commit,
    default_config_dir,
)
from smtp_policy.commands._options import add_config_option
from smtp_policy.config import Config, load_config
from smtp_policy.config.listen import ListenAddress
from smtp_policy.config.postfix import (
    Plan,
    milter_endpoint,
    plan_apply,
    plan_remove,
    postfix_banner,
    record_after_apply,
    record_after_remove,
    socketmap,
    wiring_for,
)

HELP = "plan, apply or remove the main.cf settings for the milter, maps, policy and bounces"

BOUNCE_TEMPLATE = "/etc/postfix/smtp-policy-bounce.cf"
BOUNCE_TEMPLATE_NAME = "smtp-policy-bounce.cf"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the postfix-config options."""
    add_config_option(parser)
    parser.add_argument(
        "--postfix-dir",
        metavar="DIR",
        help="the Postfix config directory (default: postconf -h config_directory)",
    )
    parser.add_argument(
        "--with-policy",
        action="store_true",
        help="also put our check_policy_service into smtpd_recipient_restrictions",
    )
    parser.add_argument(
        "--bounce-template",
        metavar="PATH",
        help="the file `smtp-policy postfix bounce-template -o PATH` wrote "
        f"(default DIR/{BOUNCE_TEMPLATE_NAME}; skipped when it does not exist)",
    )
    parser.add_argument(
        "--replace-bounce-template",
        action="store_true",
        help="use our bounce template even where main.cf names one of yours",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--apply", action="store_true", help="write the plan (main.cf is backed up first)"
    )
    action.add_argument(
        "--remove", action="store_true", help="take out what --apply added, give back the rest"
    )
    action.add_argument(
        "--print-snippet",
        action="store_true",
        help="only print the fail-open lines for an empty main.cf (the old output)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the plan, or apply it, or remove what was applied."""
    config = load_config(args.config)
    if args.print_snippet:
        template = args.bounce_template or BOUNCE_TEMPLATE
        print("\n".join(main_cf_lines(config, template, args.with_policy)))
        return 0
    directory = PostfixDir(Path(args.postfix_dir) if args.postfix_dir else default_config_dir())
    directory.check()
    if args.remove:
        return _remove(directory)
    if not args.apply:
        plan, _ = _plan(directory, config, args)
        _refuse(plan)
        _print_plan(directory, plan, "plan (nothing written; --apply writes it)")
        return 0
    with directory.locked():
        plan, current = _plan(directory, config, args)
        _refuse(plan)
        _print_plan(directory, plan, "apply")
        if not plan.changes:
            say("nothing to change: smtp_policy is wired in already")
            return 0
        record = record_after_apply(directory.read_record(), plan)
        backup = commit(directory, plan, current, record)
    say(f"applied {len(plan.changes)} change(s); main.cf was backed up to {backup}")
    say(f"record: {directory.record_path} (--remove reads it); now run: {_reload(directory)}")
    return 0


def _plan(
    directory: PostfixDir, config: Config, args: argparse.Namespace
) -> tuple[Plan, dict[str, str]]:
    """The apply plan against main.cf as it is now, and main.cf's values."""
    current, postconf_warnings = directory.read()
    template = args.bounce_template or str(directory.path / BOUNCE_TEMPLATE_NAME)
    notes = [f"postconf: {w}" for w in postconf_warnings]
    if not Path(template).is_file():
        notes.append(
            f"bounce_template_file left alone: {template} does not exist (write it with "
            f"`smtp-policy postfix bounce-template -o {template}`, then run this again)"
        )
        template = None
    wiring = wiring_for(
        config,
        with_policy=args.with_policy,
        bounce_template=template,
        replace_bounce_template=args.replace_bounce_template,
        spool=directory.queue_directory(),
    )
    plan = plan_apply(wiring, current, chrooted_smtpd=directory.chrooted_smtpd())
    return Plan(plan.changes, plan.kept, plan.refusals, (*notes, *plan.warnings)), current


def _remove(directory: PostfixDir) -> int:
    """Take out what the record says --apply added; 0 also when there is nothing to remove."""
    with directory.locked():
        record = directory.read_record()
        if not record:
            say(f"nothing to remove: {directory.path} has no {RECORD_NAME} (no --apply to undo)")
            return 0
        current, _ = directory.read()
        plan = plan_remove(record, current)
        _print_plan(directory, plan, "remove")
        left = record_after_remove(record, plan)
        if plan.changes:
            backup = commit(directory, plan, current, left)
            say(f"removed; main.cf was backed up to {backup}; now run: {_reload(directory)}")
        else:
            directory.write_record(left)
    for refusal in plan.refusals:
        print(f"smtp-policy postfix-config: {refusal.parameter}: {refusal.why}", file=sys.stderr)
    return 1 if plan.refusals else 0


def _refuse(plan: Plan) -> None:
    """Raise the plan's refusals (one line each)."""
    if plan.refusals:
        lines = [f"{r.parameter}: {r.why} (nothing written)" for r in plan.refusals]
        raise PostconfError("\n".join(lines))


def _reload(directory: PostfixDir) -> str:
    try:
        default = default_config_dir()
    except PostconfError:
        default = None
    if default is not None and default.resolve() == directory.path.resolve():
        return "postfix reload"
    return f"postfix -c {directory.path} reload"


def _print_plan(directory: PostfixDir, plan: Plan, what: str) -> None:
    """Each parameter: current value, new value, why; then the warnings."""
    say(f"{directory.main_cf}: {what}")
    for change in plan.changes:
        say(f"change {change.parameter}")
        say(f"    now: {_shown(change.current)}")
        say(f"    new: {_shown(change.new)}")
        say(f"    why: {change.why}")
    for kept in plan.kept:
        say(f"keep   {kept.parameter}: {kept.why}")
    for warning in plan.warnings:
        say(f"warning: {warning}")


def say(line: str) -> None:
    """Print one line as a main.cf comment: appended to main.cf by mistake, it changes nothing."""
    print(f"# {line}")


def _shown(value: str | None) -> str:
    return "(not set)" if value is None else value or "(empty)"


def main_cf_lines(config: Config, bounce_template: str, with_policy: bool = False) -> list[str]:
    """The fail-open main.cf lines for ``config``, for an empty main.cf (--print-snippet)."""
    milter = milter_endpoint(config.milter.listen)
    footer, dsn = (socketmap(config.maps.listen, name) for name in ("footer", "dsn"))
    policy = ListenAddress.parse(config.policy.listen).postfix()
    banner = postfix_banner(config)
    policy_line = (
        "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination,\n"
        f"    check_policy_service {{ {policy}, timeout=5s, default_action=DUNNO }}"
    )
    return [
        "# smtp_policy (generated by `smtp-policy postfix-config`). Every hook fails open.",
        "# 1. The milter: one event per SMTP stage, Postfix-rejected recipients, policy replies.",
        f"smtpd_milters = {{ {milter}, default_action=accept, connect_timeout=5s,",
        "    command_timeout=10s, content_timeout=60s }",
        "milter_protocol = 6",
        "# 2. A plain-language footer under Postfix's own 4xx/5xx replies, and friendlier",
        "#    per-recipient text in bounces (Diagnostic-Code keeps the remote's reply).",
        f"smtpd_reject_footer_maps = {footer}",
        f"smtp_delivery_status_filter = {dsn}",
        "lmtp_delivery_status_filter = $smtp_delivery_status_filter",
        "# 3. Friendlier bounce prose: smtp-policy postfix bounce-template -o " + bounce_template,
        f"bounce_template_file = {bounce_template}",
        "# 4. The greeting from [banner] greeting (Postfix requires it to start with $myhostname).",
        f"smtpd_banner = {banner}"
        if banner
        else "#smtpd_banner: [banner] greeting cannot be written as a Postfix smtpd_banner",
        "# 5. Record every policy decision point (never blocks: default_action=DUNNO).",
        *(
            policy_line.splitlines()
            if with_policy
            else ["#" + ln for ln in policy_line.splitlines()]
        ),
    ]
