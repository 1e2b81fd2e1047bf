"""The postfix-config planner over generated main.cf values: applying twice changes nothing,
removing gives back exactly what was there, and list edits keep the admin's text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.config import BannerConfig, Config
from smtp_policy.config.postfix import (
    PARAMETERS,
    Wiring,
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

#: Elements an admin's main.cf lists hold, braces and all.
ADMIN_ELEMENTS = (
    "inet:127.0.0.1:8891",
    "inet:127.0.0.1:8893",
    "{ unix:opendkim/opendkim.sock, default_action=tempfail }",
    "permit_mynetworks",
    "permit_sasl_authenticated",
    "reject_unauth_destination",
    "reject_rbl_client zen.spamhaus.org",
    "check_policy_service inet:127.0.0.1:10023",
    "check_policy_service { unix:private/policyd-spf, timeout=30s }",
    "hash:/etc/postfix/footers",
    "inline:{ {550 5.7.1 x} = see { our } page }",
    "$default_delivery_status_filter",
    "permit",
)
separators = st.sampled_from((", ", " ", ",", ",\t"))
lists = st.builds(
    lambda elements, sep: sep.join(elements),
    st.lists(st.sampled_from(ADMIN_ELEMENTS), max_size=6),
    separators,
)
SCALARS = {
    "smtpd_banner": st.sampled_from(("$myhostname ESMTP $mail_name", "$myhostname ESMTP")),
    "bounce_template_file": st.sampled_from(("", "/etc/postfix/bounce.cf")),
    "milter_default_action": st.sampled_from(("accept", "tempfail", "reject")),
    "default_delivery_status_filter": st.sampled_from(("", "pcre:/etc/postfix/dsn")),
}
LISTS = [p for p in PARAMETERS if p not in SCALARS]
main_cfs = st.fixed_dictionaries(
    {}, optional={**dict.fromkeys(LISTS, lists), **SCALARS, "myhostname": st.just("mx.test")}
)
wirings = st.builds(
    lambda policy, banner, replace_template: wiring_for(
        Config(banner=BannerConfig(greeting=banner)),
        with_policy=policy,
        bounce_template="/etc/postfix/smtp-policy-bounce.cf",
        replace_bounce_template=replace_template,
    ),
    st.booleans(),
    st.sampled_from(("{hostname} ESMTP", "{hostname} ESMTP ready", "Hi {hostname}")),
    st.booleans(),
)


@settings(max_examples=300)
@given(main_cfs, wirings)
def test_apply_twice_changes_nothing_and_remove_gives_it_back(
    current: dict[str, str], wiring: Wiring
) -> None:
    plan = plan_apply(wiring, current)
    assert plan.refusals == ()
    after = applied_values(current, plan)
    assert {k: v for k, v in after.items() if k not in PARAMETERS} == {
        k: v for k, v in current.items() if k not in PARAMETERS
    }
    assert plan_apply(wiring, after).changes == ()
    record = record_after_apply({}, plan)
    removal = plan_remove(record, after)
    assert removal.refusals == ()
    assert applied_values(after, removal) == current
    assert record_after_remove(record, removal) == {}


@given(lists, st.integers(0, 7), st.sampled_from((*ADMIN_ELEMENTS[:3], "{ ours, a=b }")))
def test_an_inserted_element_comes_out_exactly(value: str, at: int, element: str) -> None:
    """with_element keeps every admin element in order; without_element undoes it."""
    inserted = with_element(value, element, at)
    texts = [e.text for e in list_elements(inserted)]
    admin = [e.text for e in list_elements(value)]
    assert (
        texts[: min(at, len(admin))] + texts[min(at, len(admin)) + len(list_elements(element)) :]
        == admin
    )
    if "{ ours" in element:
        assert without_element(inserted, element) == value


@given(st.text(alphabet=" ,{}ab\t", max_size=30))
def test_any_text_splits_or_is_refused_cleanly(value: str) -> None:
    try:
        elements = list_elements(value)
    except ValueError:
        return
    for element in elements:
        assert value[element.start : element.end] == element.text
        assert element.text.count("{") == element.text.count("}")
