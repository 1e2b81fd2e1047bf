"""The postfix-config planner: it adds smtp_policy to a production main.cf and never clobbers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from smtp_policy.adapters.postconf import chrooted_smtpd, parse_parameters
from smtp_policy.config import BannerConfig, Config, MilterConfig
from smtp_policy.config.postfix import (
    Applied,
    PostfixListError,
    applied_values,
    list_elements,
    plan_apply,
    plan_remove,
    record_after_apply,
    record_after_remove,
    wiring_for,
    with_element,
    without_element,
)

OPENDKIM = "inet:127.0.0.1:8891"
OPENDMARC = "inet:127.0.0.1:8893"
POSTGREY = "check_policy_service inet:127.0.0.1:10023"
OUR_MILTER = (
    "{ unix:smtp-policy/milter.sock, default_action=accept, protocol=6, connect_timeout=5s, "
    "command_timeout=10s, content_timeout=60s }"
)
OUR_POLICY = "check_policy_service { inet:127.0.0.1:8897, timeout=5s, default_action=DUNNO }"
FOOTER = "socketmap:inet:127.0.0.1:8896:footer"
DSN = "socketmap:inet:127.0.0.1:8896:dsn"
TEMPLATE = "/etc/postfix/smtp-policy-bounce.cf"

#: A production main.cf as ``postconf -n`` shows it: OpenDKIM, OpenDMARC, SASL, a DNSBL,
#: postgrey, a footer table of the admin's.
PRODUCTION = {
    "smtpd_banner": "$myhostname ESMTP $mail_name (Debian/GNU)",
    "smtpd_milters": f"{OPENDKIM}, {OPENDMARC}",
    "non_smtpd_milters": "$smtpd_milters",
    "milter_default_action": "tempfail",
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_recipient_restrictions": (
        "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination, "
        f"reject_rbl_client zen.spamhaus.org, {POSTGREY}"
    ),
    "smtpd_reject_footer_maps": "hash:/etc/postfix/footers",
}

WIRING = wiring_for(Config(), with_policy=True, bounce_template=TEMPLATE)


def new_values(current: dict[str, str]) -> dict[str, str | None]:
    """Parameter -> new value of the plan against ``current``."""
    return {c.parameter: c.new for c in plan_apply(WIRING, current).changes}


@pytest.mark.parametrize(
    ("value", "elements"),
    [
        ("", []),
        ("  ", []),
        (f"{OPENDKIM},{OPENDMARC}", [OPENDKIM, OPENDMARC]),
        (f"{OPENDKIM}  {OPENDMARC}", [OPENDKIM, OPENDMARC]),
        (f"{OPENDKIM},\n    {OPENDMARC}", [OPENDKIM, OPENDMARC]),
        (f"{OUR_MILTER}, {OPENDKIM}", [OUR_MILTER, OPENDKIM]),
        (OUR_POLICY, ["check_policy_service", OUR_POLICY.split(" ", 1)[1]]),
        ("inline:{ {a b} = c d, e=f } hash:/x", ["inline:{ {a b} = c d, e=f }", "hash:/x"]),
        ("{ { nested } }, x", ["{ { nested } }", "x"]),
    ],
)
def test_list_elements_respect_braces(value: str, elements: list[str]) -> None:
    assert [e.text for e in list_elements(value)] == elements


@pytest.mark.parametrize("value", ["{ inet:127.0.0.1:8891, default_", "a }", "{ a } }"])
def test_unbalanced_braces_are_an_error(value: str) -> None:
    with pytest.raises(PostfixListError):
        list_elements(value)


@pytest.mark.parametrize(
    ("value", "before", "result"),
    [
        ("", None, "E"),
        ("a, b", None, "a, b, E"),
        ("a, b", 0, "E, a, b"),
        ("a b", 1, "a E, b"),
        ("a,\tb", 5, "a,\tb, E"),
    ],
)
def test_with_and_without_element(value: str, before: int | None, result: str) -> None:
    """Inserting keeps the admin's text; taking out gives it back exactly."""
    assert with_element(value, "E", before) == result
    assert without_element(result, "E") == value
    assert without_element(value, "E") is None


def test_production_main_cf_gets_ours_added_and_keeps_everything() -> None:
    """OpenDKIM and OpenDMARC stay in order after ours, postgrey/SASL/DNSBL stay, the admin's
    footer table stays first, the banner is not touched."""
    got = new_values(PRODUCTION)
    assert got == {
        "smtpd_milters": f"{OUR_MILTER}, {OPENDKIM}, {OPENDMARC}",
        "smtpd_reject_footer_maps": f"hash:/etc/postfix/footers, {FOOTER}",
        "smtp_delivery_status_filter": DSN,
        "lmtp_delivery_status_filter": "$smtp_delivery_status_filter",
        "smtpd_recipient_restrictions": (
            "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination, "
            f"{OUR_POLICY}, reject_rbl_client zen.spamhaus.org, {POSTGREY}"
        ),
        "bounce_template_file": TEMPLATE,
    }


def test_production_warnings() -> None:
    """milter_default_action = tempfail is not ours; non_smtpd_milters follows smtpd_milters."""
    warnings = plan_apply(WIRING, PRODUCTION).warnings
    assert any("milter_default_action = tempfail" in w and "ours carries" in w for w in warnings)
    assert any("non_smtpd_milters" in w for w in warnings)


def test_empty_main_cf_gets_plain_values() -> None:
    got = new_values({})
    assert got["smtpd_milters"] == OUR_MILTER
    assert got["smtpd_reject_footer_maps"] == FOOTER
    assert got["smtpd_recipient_restrictions"] == OUR_POLICY
    assert "smtpd_banner" not in got


@pytest.mark.parametrize(
    ("restrictions", "result"),
    [
        (
            "permit_mynetworks, reject_unauth_destination",
            f"permit_mynetworks, reject_unauth_destination, {OUR_POLICY}",
        ),
        (f"permit_mynetworks {POSTGREY}", f"permit_mynetworks {POSTGREY}, {OUR_POLICY}"),
        ("permit_sasl_authenticated, permit", f"permit_sasl_authenticated, {OUR_POLICY}, permit"),
    ],
)
def test_policy_goes_after_reject_unauth_destination_or_last(
    restrictions: str, result: str
) -> None:
    got = new_values({"smtpd_recipient_restrictions": restrictions})
    assert got["smtpd_recipient_restrictions"] == result


def test_without_policy_the_restrictions_are_not_touched() -> None:
    wiring = wiring_for(Config(), bounce_template=TEMPLATE)
    plan = plan_apply(wiring, PRODUCTION)
    assert "smtpd_recipient_restrictions" not in {c.parameter for c in plan.changes}


def test_dsn_filter_keeps_the_default_delivery_status_filter() -> None:
    got = new_values({"default_delivery_status_filter": "pcre:/etc/postfix/dsn"})
    assert got["smtp_delivery_status_filter"] == f"$default_delivery_status_filter, {DSN}"
    got = new_values(
        {"smtp_delivery_status_filter": "pcre:/x", "lmtp_delivery_status_filter": "pcre:/y"}
    )
    assert got["smtp_delivery_status_filter"] == f"pcre:/x, {DSN}"
    assert got["lmtp_delivery_status_filter"] == f"pcre:/y, {DSN}"


def test_banner_only_when_banner_sets_a_greeting() -> None:
    """The shipped greeting leaves smtpd_banner alone; an admin greeting replaces theirs."""
    assert "smtpd_banner" not in new_values(PRODUCTION)
    config = replace(Config(), banner=BannerConfig(greeting="{hostname} ESMTP ready"))
    plan = plan_apply(wiring_for(config), PRODUCTION)
    banner = next(c for c in plan.changes if c.parameter == "smtpd_banner")
    assert (banner.current, banner.new) == (PRODUCTION["smtpd_banner"], "$myhostname ESMTP ready")
    unsayable = replace(Config(), banner=BannerConfig(greeting="Welcome to {hostname}"))
    plan = plan_apply(wiring_for(unsayable), PRODUCTION)
    assert "smtpd_banner" not in {c.parameter for c in plan.changes}
    assert any("smtpd_banner left alone" in w for w in plan.warnings)


def test_bounce_template_only_when_the_admin_has_none() -> None:
    theirs = {"bounce_template_file": "/etc/postfix/our-own-bounces.cf"}
    assert "bounce_template_file" not in new_values(theirs)
    replacing = wiring_for(Config(), bounce_template=TEMPLATE, replace_bounce_template=True)
    got = {c.parameter: c.new for c in plan_apply(replacing, theirs).changes}
    assert got["bounce_template_file"] == TEMPLATE


def test_no_other_parameter_changes() -> None:
    allowed = {
        "smtpd_milters", "smtpd_reject_footer_maps", "smtp_delivery_status_filter",
        "lmtp_delivery_status_filter", "smtpd_recipient_restrictions", "smtpd_banner",
        "bounce_template_file",
    }  # fmt: skip
    assert set(new_values(PRODUCTION)) <= allowed
    assert set(applied_values(PRODUCTION, plan_apply(WIRING, PRODUCTION))) == set(PRODUCTION) | {
        "smtp_delivery_status_filter", "lmtp_delivery_status_filter", "bounce_template_file",
    }  # fmt: skip


@pytest.mark.parametrize("current", [{}, PRODUCTION, {"smtpd_milters": OPENDKIM}])
def test_planning_again_changes_nothing(current: dict[str, str]) -> None:
    after = applied_values(current, plan_apply(WIRING, current))
    assert plan_apply(WIRING, after).changes == ()


def test_remove_gives_back_what_was_there() -> None:
    plan = plan_apply(WIRING, PRODUCTION)
    record = record_after_apply({}, plan)
    after = applied_values(PRODUCTION, plan)
    removal = plan_remove(record, after)
    assert removal.refusals == ()
    assert applied_values(after, removal) == PRODUCTION
    assert record_after_remove(record, removal) == {}


def test_remove_takes_only_our_element_from_a_list_edited_since() -> None:
    plan = plan_apply(WIRING, PRODUCTION)
    record = record_after_apply({}, plan)
    after = applied_values(PRODUCTION, plan)
    after["smtpd_milters"] += ", inet:127.0.0.1:8894"
    back = applied_values(after, plan_remove(record, after))
    assert back["smtpd_milters"] == f"{OPENDKIM}, {OPENDMARC}, inet:127.0.0.1:8894"


def test_remove_refuses_a_value_changed_since() -> None:
    config = replace(Config(), banner=BannerConfig(greeting="{hostname} ESMTP ready"))
    plan = plan_apply(wiring_for(config), PRODUCTION)
    record = record_after_apply({}, plan)
    after = applied_values(PRODUCTION, plan) | {"smtpd_banner": "$myhostname hello"}
    removal = plan_remove(record, after)
    assert [r.parameter for r in removal.refusals] == ["smtpd_banner"]
    assert "changed since --apply" in removal.refusals[0].why
    assert set(record_after_remove(record, removal)) == {"smtpd_banner"}
    assert applied_values(after, removal)["smtpd_milters"] == PRODUCTION["smtpd_milters"]


def test_a_half_written_list_is_refused() -> None:
    plan = plan_apply(WIRING, {"smtpd_milters": "{ inet:127.0.0.1:8891, default_"})
    assert [r.parameter for r in plan.refusals] == ["smtpd_milters"]
    assert "smtpd_milters" not in {c.parameter for c in plan.changes}


def test_our_milter_already_there_without_default_action_is_warned_about() -> None:
    plan = plan_apply(WIRING, {"smtpd_milters": f"unix:smtp-policy/milter.sock, {OPENDKIM}"})
    assert "smtpd_milters" not in {c.parameter for c in plan.changes}
    assert any("has no default_action" in w for w in plan.warnings)


def test_chrooted_smtpd_with_a_socket_outside_the_spool_is_warned_about() -> None:
    config = replace(Config(), milter=MilterConfig(listen="unix:/run/smtp-policy/milter.sock"))
    wiring = wiring_for(config)
    assert any("chrooted" in w for w in plan_apply(wiring, {}, chrooted_smtpd=True).warnings)
    assert not any("chrooted" in w for w in plan_apply(WIRING, {}, chrooted_smtpd=True).warnings)


def test_postconf_output_parsing() -> None:
    assert parse_parameters("a = b c\nempty =\nx = y = z\n") == {
        "a": "b c",
        "empty": "",
        "x": "y = z",
    }
    debian = "smtp      inet  n       -       y       -       -       smtpd\n"
    assert chrooted_smtpd(debian)
    assert not chrooted_smtpd(debian.replace(" y ", " n "))


def test_record_keeps_the_first_before() -> None:
    first = record_after_apply({}, plan_apply(WIRING, PRODUCTION))
    assert first["smtpd_milters"] == Applied(
        PRODUCTION["smtpd_milters"], f"{OUR_MILTER}, {OPENDKIM}, {OPENDMARC}", (OUR_MILTER,)
    )
