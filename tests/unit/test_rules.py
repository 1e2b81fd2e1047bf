"""Policy rule matching: stage, networks, patterns, size and authentication."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from smtp_policy.core.model import EnhancedCode, Reason
from smtp_policy.core.networks import parse_address
from smtp_policy.core.policy import (
    PolicyRule,
    RuleAction,
    RuleFacts,
    compile_pattern,
    decide,
    known_at,
    match_rules,
    render_decision,
    verdict_of,
)
from smtp_policy.core.stages import Stage
from smtp_policy.core.texts import TextsConfig
from smtp_policy.data import default_knowledge


def rule(
    name: str = "r",
    stage: Stage = Stage.MAIL,
    *,
    client_network: Sequence[str] = (),
    sender: Sequence[str] = (),
    recipient: Sequence[str] = (),
    helo: Sequence[str] = (),
    size_over: int | None = None,
    authenticated: bool | None = None,
) -> PolicyRule:
    """A reject rule with the given match keys, compiled as the config loader does."""
    return PolicyRule(
        name=name,
        stage=stage,
        action=RuleAction.REJECT,
        client_network=tuple(ipaddress.ip_network(n) for n in client_network),
        sender=tuple(compile_pattern(p) for p in sender),
        recipient=tuple(compile_pattern(p) for p in recipient),
        helo=tuple(compile_pattern(p) for p in helo),
        size_over=size_over,
        authenticated=authenticated,
    )


def test_first_matching_rule_of_the_stage_wins() -> None:
    """Rules are tried in order; rules of other stages are skipped."""
    rules = [
        rule("rcpt-stage", Stage.RCPT),
        rule("other-sender", sender=["*@other.example"]),
        rule("spam", sender=["*@spam.example"]),
        rule("catch-all"),
    ]
    facts = RuleFacts(sender="a@spam.example")
    assert match_rules(rules, Stage.MAIL, facts) is rules[2]
    assert match_rules(rules, "mail", RuleFacts(sender="x@y.example")) is rules[3]
    assert match_rules(rules, "rcpt", facts) is rules[0]
    assert match_rules(rules, Stage.EOM, facts) is None


def test_an_unknown_stage_name_is_an_error() -> None:
    """The stage must be one of the six; a typo is a ValueError, not a silent miss."""
    with pytest.raises(ValueError, match="rcptto"):
        match_rules([], "rcptto", RuleFacts())


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        pytest.param("192.0.2.7", True, id="v4-inside"),
        pytest.param("192.0.3.7", False, id="v4-outside"),
        pytest.param("2001:db8::25", True, id="v6-inside"),
        pytest.param("IPv6:2001:db8::25", True, id="sendmail-ipv6-prefix"),
        pytest.param("[2001:db8::25]", True, id="bracketed"),
        pytest.param("::ffff:192.0.2.9", True, id="v4-mapped"),
        pytest.param("unknown", False, id="not-an-address"),
        pytest.param("", False, id="empty"),
    ],
)
def test_client_network(client: str, expected: bool) -> None:
    """client_network takes IPv4 and IPv6 CIDRs; MTA address spellings are understood."""
    r = rule(stage=Stage.CONNECT, client_network=["192.0.2.0/24", "2001:db8::/32"])
    assert (match_rules([r], "connect", RuleFacts(client_addr=client)) is r) is expected


@pytest.mark.parametrize(
    ("pattern", "sender", "expected"),
    [
        pytest.param("*@spam.example", "bob@spam.example", True, id="glob"),
        pytest.param("*@spam.example", "<Bob@SPAM.Example>", True, id="brackets-and-case"),
        pytest.param("*@spam.example", "bob@spam.example.org", False, id="glob-is-whole"),
        pytest.param("*@spam.example", "bob@sub.spam.example", False, id="glob-no-subdomain"),
        pytest.param(r"/@(.+\.)?spam\.example$/", "bob@sub.spam.example", True, id="regex"),
        pytest.param("/spam/", "bob@myspam.example", True, id="regex-searches"),
        pytest.param("", "", True, id="null-sender"),
        pytest.param("", "<>", True, id="null-sender-brackets"),
        pytest.param("", "a@b.example", False, id="null-only"),
    ],
)
def test_sender_patterns(pattern: str, sender: str, expected: bool) -> None:
    """Globs match the whole address, /regexes/ search; both ignore case and <>."""
    r = rule(sender=[pattern])
    assert (match_rules([r], "mail", RuleFacts(sender=sender)) is r) is expected


def test_a_fact_not_known_yet_does_not_match() -> None:
    """A rule that needs the recipient never matches facts without one."""
    r = rule(stage=Stage.DATA, recipient=["*"])
    assert match_rules([r], "data", RuleFacts(recipient=None)) is None
    assert match_rules([r], "data", RuleFacts(recipient="a@b.example")) is r


def test_all_keys_must_match_any_list_entry_may() -> None:
    """Keys combine with AND, list entries with OR."""
    r = rule(
        stage=Stage.RCPT,
        sender=["a@x.example", "b@x.example"],
        recipient=["*@local.example"],
        helo=["/^mail\\./"],
    )
    good = RuleFacts(sender="b@x.example", recipient="u@local.example", helo="mail.x.example")
    assert r.matches(good)
    assert not r.matches(
        RuleFacts(sender="c@x.example", recipient="u@local.example", helo="mail.x")
    )
    assert not r.matches(RuleFacts(sender="a@x.example", recipient="u@else.example", helo="mail.x"))
    assert not r.matches(RuleFacts(sender="a@x.example", recipient="u@local.example", helo="mx.x"))


def test_size_over_is_strict_and_needs_a_size() -> None:
    """size_over matches sizes above the threshold only, and never an unknown size."""
    r = rule(size_over=1000)
    assert r.matches(RuleFacts(size=1001))
    assert not r.matches(RuleFacts(size=1000))
    assert not r.matches(RuleFacts(size=None))


def test_authenticated() -> None:
    """authenticated = false matches anonymous clients only, true logged-in ones only."""
    assert rule(authenticated=False).matches(RuleFacts(authenticated=False))
    assert not rule(authenticated=False).matches(RuleFacts(authenticated=True))
    assert rule(authenticated=True).matches(RuleFacts(authenticated=True))
    assert rule().matches(RuleFacts(authenticated=True))


@pytest.mark.parametrize(
    ("key", "stage", "expected"),
    [
        ("client_network", Stage.CONNECT, True),
        ("helo", Stage.CONNECT, False),
        ("helo", Stage.HELO, True),
        ("sender", Stage.HELO, False),
        ("sender", Stage.EOM, True),
        ("recipient", Stage.MAIL, False),
        ("recipient", Stage.RCPT, True),
        ("size_over", Stage.MAIL, True),
        ("authenticated", Stage.HELO, False),
    ],
)
def test_known_at(key: str, stage: Stage, expected: bool) -> None:
    """Each fact is known from its stage on."""
    assert known_at(key, stage) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("IPv6:2001:db8::1", "2001:db8::1"),
        ("ipv6:2001:db8::1", "2001:db8::1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("mail.example.com", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    """Addresses as Postfix and Sendmail write them parse; names do not."""
    addr = parse_address(text)
    assert (str(addr) if addr else None) == expected


# -- the verdict and the decision -------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "code", "enhanced", "settled"),
    [
        (RuleAction.REJECT, None, None, (550, "5.7.1")),
        (RuleAction.TEMPFAIL, None, None, (451, "4.7.1")),
        (RuleAction.REJECT, 650, None, (550, "5.7.1")),  # not a failure code: the default
        (RuleAction.TEMPFAIL, 250, "2.0.0", (451, "4.0.0")),
        (RuleAction.TEMPFAIL, 421, "5.7.0", (421, "4.7.0")),  # the code's class wins
        (RuleAction.REJECT, 554, None, (554, "5.7.1")),
        (RuleAction.REJECT, 451, None, (451, "4.7.1")),  # a 4xx reject stays (as configured)
    ],
)
def test_a_reply_verdict_settles_its_codes(
    action: RuleAction, code: int | None, enhanced: str | None, settled: tuple[int, str]
) -> None:
    parsed = EnhancedCode.parse(enhanced) if enhanced else None
    verdict = verdict_of(PolicyRule("r", Stage.RCPT, action, code=code, enhanced=parsed))
    assert (verdict.code, str(verdict.enhanced)) == settled


def test_a_verdict_without_reply_has_no_codes() -> None:
    rule = PolicyRule("hold", Stage.MAIL, RuleAction.QUARANTINE, reason=Reason.SPAM_DETECTED)
    verdict = verdict_of(rule)
    assert (verdict.code, verdict.enhanced, verdict.reason) == (None, None, Reason.SPAM_DETECTED)
    decision = render_decision(verdict, kb=default_knowledge(), texts=TextsConfig(), context={})
    assert decision.reply() is None
    assert (decision.action, decision.reason, decision.lines) == (
        RuleAction.QUARANTINE,
        Reason.SPAM_DETECTED,
        (),
    )


def test_decide_matches_settles_and_words() -> None:
    """The one decision: the first matching rule, its codes settled, its text rendered."""
    kb = default_knowledge()
    rules = [
        PolicyRule(
            "slow",
            Stage.RCPT,
            RuleAction.TEMPFAIL,
            recipient=(compile_pattern("*@busy.test"),),
            code=451,
            enhanced=EnhancedCode(5, 1, 1),
            reason=Reason.RATE_LIMITED,
            text="Slow down, {recipient} ({reason})\nRetry later",
        )
    ]
    context = {"recipient": "bob@busy.test"}
    elsewhere = RuleFacts(recipient="<a@x.test>")
    assert decide(rules, Stage.RCPT, elsewhere, kb=kb, texts=None, context=context) is None
    decision = decide(
        rules,
        Stage.RCPT,
        RuleFacts(recipient="<bob@busy.test>"),
        kb=kb,
        texts=TextsConfig(),
        context=context,
    )
    assert decision is not None
    assert (decision.rule, decision.code, str(decision.enhanced)) == ("slow", 451, "4.1.1")
    assert decision.reason is Reason.RATE_LIMITED
    assert decision.explanation is not None
    assert decision.explanation.classification.rule is None  # the rule's reason replaced it
    assert decision.lines == ("Slow down, bob@busy.test (rate_limited)", "Retry later")
    reply = decision.reply()
    assert reply is not None
    assert reply.wire().startswith("451-4.1.1 Slow down")


def test_without_texts_the_rules_text_is_kept_and_our_words_follow() -> None:
    rule = PolicyRule(
        "plain", Stage.MAIL, RuleAction.REJECT, text="No {sender}", help_url="https://h.test/x"
    )
    decision = render_decision(verdict_of(rule), kb=default_knowledge(), texts=None, context={})
    assert decision.lines[0] == "No {sender}"  # not a template without [texts]
    assert decision.lines[-1] == "More information: https://h.test/x"
