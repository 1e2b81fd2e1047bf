"""Rule-level advice: a precise rule speaks in its own words, and every answer says what decided."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from typing import Any

import pytest

from smtp_policy.core.errors import KnowledgeError
from smtp_policy.core.events import reply_fields
from smtp_policy.core.explain import explain_text
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import Actor, DecidedBy, Explanation
from smtp_policy.data import default_knowledge


@pytest.fixture(name="kb", scope="module")
def _kb() -> KnowledgeBase:
    return default_knowledge()


#: reply, rule id, reason, actor, words the advice must not contain (lowercase).
CASES: list[tuple[str, str, str, Actor, tuple[str, ...]]] = [
    # Postfix smtpd and postscreen
    (
        "504 5.5.2 <ws42>: Helo command rejected: need fully-qualified hostname",
        "postfix.helo_not_fqdn",
        "blocked",
        Actor.SENDER_ADMIN,
        ("blocklist", "delist"),
    ),
    (
        "501 5.5.2 <mail_server>: Helo command rejected: Invalid name",
        "postfix.helo_invalid_name",
        "blocked",
        Actor.SENDER_ADMIN,
        ("blocklist", "delist"),
    ),
    (
        "450 4.7.1 <S510.gigasys>: Helo command rejected: Host not found",
        "postfix.helo_host_not_found",
        "blocked",
        Actor.SENDER_ADMIN,
        ("blocklist", "nothing to do"),
    ),
    (
        "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.9]",
        "postfix.client_no_hostname",
        "require_ptr",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "450 4.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.9]",
        "postfix.client_no_reverse_hostname",
        "require_ptr",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "554 5.7.1 <unknown[192.0.2.8]>: Client host rejected: Access denied",
        "postfix.client_access_denied",
        "blocked",
        Actor.SENDER_ADMIN,
        ("spamhaus", "delisting"),
    ),
    (
        "554 5.7.1 Service unavailable; Client host [192.0.2.9] blocked using rbl.example.com",
        "dnsbl.blocked_using",
        "blocked",
        Actor.SENDER_ADMIN,
        ("spamhaus",),
    ),
    (
        "554 5.7.1 <bob@example.org>: Relay access denied",
        "postfix.relay_access_denied",
        "no_relaying",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "450 4.1.8 <a@nonexistent.example>: Sender address rejected: Domain not found",
        "postfix.sender_domain_not_found",
        "rejected",
        Actor.SENDER_ADMIN,
        ("recipient address", "nothing to do"),
    ),
    (
        "450 4.1.2 <b@example.invalid>: Recipient address rejected: Domain not found",
        "postfix.recipient_domain_not_found",
        "host_unknown",
        Actor.SENDER,
        ("sender address", "nothing to do"),
    ),
    (
        "553 5.7.1 <ceo@example.com>: Sender address rejected: not owned by user alice",
        "postfix.sender_login_mismatch",
        "rejected",
        Actor.SENDER,
        ("blocklist",),
    ),
    (
        "503 5.5.0 <b@example.com>: Recipient address rejected: "
        "Improper use of SMTP command pipelining",
        "postfix.pipelining",
        "syntax_error",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "503 5.5.1 Error: need MAIL command",
        "postfix.command_sequence",
        "syntax_error",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "421 4.7.0 Error: too many errors",
        "postfix.too_many_errors",
        "rejected",
        Actor.SENDER_ADMIN,
        ("internal problem", "nothing to do"),
    ),
    (
        "452 4.5.3 Error: too many recipients",
        "postfix.too_many_recipients",
        "rate_limited",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "552 5.3.4 Message size exceeds fixed limit",
        "postfix.size_fixed_limit",
        "email_too_large",
        Actor.SENDER,
        ("blocklist",),
    ),
    (
        "452 4.3.1 Insufficient system storage",
        "postfix.insufficient_storage",
        "system_full",
        Actor.NOBODY,
        ("blocklist",),
    ),
    (
        "451 4.3.5 Server configuration error",
        "postfix.server_configuration_problem",
        "system_error",
        Actor.RECIPIENT_ADMIN,
        ("blocklist",),
    ),
    (
        "451 4.3.0 <bounces@example.org>: Temporary lookup failure",
        "postfix.temporary_lookup_failure",
        "system_error",
        Actor.RECIPIENT_ADMIN,
        ("blocklist",),
    ),
    (
        "421 4.4.2 mail.example.com Error: timeout exceeded",
        "postfix.timeout_exceeded",
        "network_error",
        Actor.SENDER_ADMIN,
        ("port 25",),
    ),
    (
        "530 5.7.0 Must issue a STARTTLS command first",
        "postfix.starttls_first",
        "failed_starttls",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "535 5.7.8 Error: authentication failed: authentication failure",
        "postfix.authentication_failed",
        "security_error",
        Actor.SENDER,
        ("blocklist",),
    ),
    (
        "mail for example.org loops back to myself",
        "postfix.loops_back_to_myself",
        "system_error",
        Actor.SENDER_ADMIN,
        ("recipient's mail server", "internal problem"),
    ),
    (
        "mail forwarding loop for alice@example.com",
        "postfix.mail_forwarding_loop",
        "network_error",
        Actor.RECIPIENT_ADMIN,
        ("firewall", "port 25"),
    ),
    (
        "554 5.4.14 Hop count exceeded - possible mail loop ATTR34 [HE1.example.com]",
        "microsoft.hop_count_exceeded",
        "network_error",
        Actor.RECIPIENT_ADMIN,
        ("firewall", "port 25"),
    ),
    # Sendmail
    (
        "550 5.7.1 <u765@example.com>... Relaying denied",
        "sendmail.relaying_denied",
        "no_relaying",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "553 5.1.8 <a@example.com>... Domain of sender address lf@ibuv.example does not exist",
        "sendmail.sender_domain",
        "rejected",
        Actor.SENDER_ADMIN,
        ("recipient address",),
    ),
    (
        "501 5.0.0 Invalid domain name",
        "sendmail.helo_invalid_domain",
        "blocked",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "503 5.0.0 Need MAIL before RCPT",
        "sendmail.command_order",
        "syntax_error",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "421 4.7.0 mail.example.com Too many bad commands; closing connection",
        "sendmail.too_many_bad_commands",
        "rejected",
        Actor.SENDER_ADMIN,
        ("internal problem",),
    ),
    (
        "550 5.7.1 Rejected: 192.0.2.14 listed at bl.example.net",
        "sendmail.dnsbl_listed",
        "blocked",
        Actor.SENDER_ADMIN,
        ("spamhaus",),
    ),
    (
        "452 4.4.5 Insufficient disk space; try again later",
        "sendmail.insufficient_disk_space",
        "system_full",
        Actor.NOBODY,
        ("blocklist",),
    ),
    (
        "553 5.3.5 mail.example.com config error: mail loops back to me (MX problem?)",
        "sendmail.mail_loops_back",
        "system_error",
        Actor.SENDER_ADMIN,
        ("recipient's mail server",),
    ),
    (
        "554 5.4.6 Too many hops 26 (25 max): from <a@example.net> via localhost, to <b@example.com>",
        "sendmail.too_many_hops",
        "network_error",
        Actor.RECIPIENT_ADMIN,
        ("firewall", "port 25"),
    ),
    # Exim
    (
        "501 Syntactically invalid HELO argument(s)",
        "exim.helo_syntax",
        "blocked",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "550 relay not permitted",
        "exim.relay_not_permitted",
        "no_relaying",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        "554 SMTP synchronization error",
        "exim.synchronization_error",
        "syntax_error",
        Actor.SENDER_ADMIN,
        ("blocklist",),
    ),
    (
        '421 mail.example.com: too many syntax or protocol errors (last was "RCPT TO:bob")',
        "exim.too_many_protocol_errors",
        "rejected",
        Actor.SENDER_ADMIN,
        ("internal problem",),
    ),
    (
        "535 Incorrect authentication data",
        "exim.incorrect_authentication_data",
        "security_error",
        Actor.SENDER,
        ("blocklist",),
    ),
    (
        "alice@example.com: lowest numbered MX record points to local host",
        "exim.mx_points_to_local_host",
        "system_error",
        Actor.SENDER_ADMIN,
        ("recipient's mail server",),
    ),
    (
        'Too many "Received" headers - suspected mail loop',
        "exim.received_header_loop",
        "network_error",
        Actor.RECIPIENT_ADMIN,
        ("firewall", "port 25"),
    ),
]


def _words(e: Explanation) -> str:
    return " ".join((e.summary, e.explanation, e.action)).lower()


@pytest.mark.parametrize("case", CASES, ids=[c[1] for c in CASES])
def test_rule_speaks_in_its_own_words(
    case: tuple[str, str, str, Actor, tuple[str, ...]], kb: KnowledgeBase
) -> None:
    """The rule decides, its summary (and action, where it has one) are what people read."""
    reply, rule_id, reason, actor, absent = case
    got = explain_text(reply, kb)
    c = got.classification
    assert (c.rule, c.reason.value if c.reason else None) == (rule_id, reason)
    assert c.decided_by is DecidedBy.RULE
    assert got.actor is actor
    rule = kb.rule_by_id[rule_id]
    assert rule.summary is not None and got.summary == rule.summary
    if rule.explanation is not None:
        assert got.explanation == rule.explanation
    if rule.action is not None:
        assert got.action == rule.action
    words = _words(got)
    assert [w for w in absent if w in words] == []


def test_sender_and_recipient_domain_not_found_read_differently(kb: KnowledgeBase) -> None:
    """Who acts differs: the sender's side fixes its domain, the sender fixes a typo."""
    sender = explain_text("450 4.1.8 <a@x.example>: Sender address rejected: Domain not found", kb)
    rcpt = explain_text("450 4.1.2 <b@x.example>: Recipient address rejected: Domain not found", kb)
    assert sender.summary != rcpt.summary and sender.action != rcpt.action
    assert "sender" in sender.summary.lower() and "recipient" in rcpt.summary.lower()
    assert (sender.actor, rcpt.actor) == (Actor.SENDER_ADMIN, Actor.SENDER)


def test_microsoft_codes_show_microsofts_meaning(kb: KnowledgeBase) -> None:
    """Where Microsoft uses an enhanced code its own way, the registry's title is not shown."""
    not_found = explain_text(
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        kb,
    )
    assert not_found.enhanced_title is not None and not_found.enhanced_meaning is not None
    assert "null mx" not in (not_found.enhanced_title + not_found.enhanced_meaning).lower()
    assert not_found.to_dict()["enhanced_title"] == "Recipient not found (Microsoft)"
    edge = explain_text(
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [BN8.example.com]", kb
    )
    assert edge.classification.reason is not None
    assert edge.classification.reason.value == "user_unknown"
    assert edge.enhanced_title is not None and edge.enhanced_meaning is not None
    assert "no answer" not in (edge.enhanced_title + edge.enhanced_meaning).lower()
    # without the provider's rule, the registry speaks
    plain = explain_text("550 5.4.1 No answer", kb)
    assert plain.enhanced_title == kb.enhanced["X.4.1"].title


@pytest.mark.parametrize(
    ("reply", "decided_by", "reason"),
    [
        pytest.param(
            "550 5.1.1 <b@example.com>: Recipient address rejected: "
            "User unknown in local recipient table",
            DecidedBy.RULE,
            "user_unknown",
            id="rule",
        ),
        pytest.param(
            "550 5.1.1 Too many recipients this hour, try later",
            DecidedBy.RULE,
            "rate_limited",
            id="provider-phrase-beats-enhanced",
        ),
        pytest.param("550 5.1.1 zzz", DecidedBy.ENHANCED, "user_unknown", id="enhanced"),
        pytest.param("5.2.2", DecidedBy.ENHANCED, "mailbox_full", id="enhanced-alone"),
        pytest.param("552 zzz", DecidedBy.CODE, "mailbox_full", id="code"),
        pytest.param("250 zzz", DecidedBy.CODE, None, id="code-success"),
        pytest.param("zzz qqq", DecidedBy.TEXT, "undefined", id="text"),
        pytest.param("", DecidedBy.TEXT, "undefined", id="empty"),
    ],
)
def test_decided_by(
    reply: str, decided_by: DecidedBy, reason: str | None, kb: KnowledgeBase
) -> None:
    """Each explanation says which part decided it, in the JSON and in the event fields."""
    got = explain_text(reply, kb)
    c = got.classification
    assert (c.decided_by, c.reason.value if c.reason else None) == (decided_by, reason)
    data = got.to_dict()
    assert data.get("decided_by") == decided_by.value
    assert list(data).index("decided_by") == list(data).index("rule") + 1
    assert reply_fields(got)["decided_by"] == decided_by.value
    assert (data.get("rule") is not None) == (decided_by is DecidedBy.RULE)


#: Words that name our own sources or files; none may reach a person.
SOURCE_WORDS = re.compile(
    r"\b(?:seed|guide|guides|sisimai|corpus|research|anchors?|kumomta)\b|"
    r"\.(?:toml|md|jsonl|txt|py)\b",
    re.IGNORECASE,
)


def _user_facing(kb: KnowledgeBase) -> list[tuple[str, str]]:
    out: list[tuple[str, str | None]] = []
    for r in kb.reasons.values():
        for text in (r.description, r.summary, r.explanation, r.action, r.transient_action):
            out.append((f"reason {r.reason}", text))
    for b in kb.basic.values():
        out += [(f"code {b.code}", b.title), (f"code {b.code}", b.meaning)]
    for e in kb.enhanced.values():
        out += [(e.key, e.title), (e.key, e.meaning)]
    for klass, (title, meaning) in kb.enhanced_classes.items():
        out += [(f"class {klass}", title), (f"class {klass}", meaning)]
    for rule in kb.rules:
        for text in (
            rule.summary,
            rule.explanation,
            rule.action,
            rule.enhanced_title,
            rule.enhanced_meaning,
        ):
            out.append((rule.id, text))
    return [(where, text) for where, text in out if text]


def test_no_user_facing_text_names_our_sources(kb: KnowledgeBase) -> None:
    """Summaries, explanations, actions, titles and meanings never mention where we read things."""
    texts = _user_facing(kb)
    assert len(texts) > 500
    bad = [(where, m.group(0)) for where, text in texts if (m := SOURCE_WORDS.search(text))]
    assert bad == []


def test_bare_471_explains_without_source_words(kb: KnowledgeBase) -> None:
    got = explain_text("471", kb).to_dict()
    text = " ".join(str(v) for v in got.values() if isinstance(v, str))
    assert SOURCE_WORDS.search(text) is None


# -- validation of a rule's own words ---------------------------------------------------------


def _shipped() -> dict[str, Any]:
    data = resources.files("smtp_policy") / "data"
    return {
        name: tomllib.loads((data / f"{name}.toml").read_text(encoding="utf-8"))
        for name in ("reasons", "basic_codes", "enhanced_codes")
    }


def _with_rule(**extra: object) -> KnowledgeBase:
    data = _shipped()
    rule: dict[str, object] = {
        "id": "t.one",
        "reason": "blocked",
        "phrases": ["frobnicated"],
        "samples": ["550 frobnicated"],
        **extra,
    }
    return KnowledgeBase.from_data(
        data["reasons"], data["basic_codes"], data["enhanced_codes"], {"t.toml": {"rule": [rule]}}
    )


def test_a_rules_own_words_are_used_and_fall_back() -> None:
    kb = _with_rule(explanation="Our own explanation.")
    got = explain_text("550 frobnicated", kb)
    assert got.explanation == "Our own explanation."
    assert got.summary == kb.reasons[got.classification.reason].summary  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ({"summary": "Ends with a period."}, "no final period"),
        ({"summary": ""}, "non-empty"),
        ({"explanation": 7}, "non-empty string"),
        ({"action": "Do this"}, "period"),
        ({"help_url": "example.com/help"}, "http"),
        ({"enhanced_title": "Own title"}, "go together"),
        ({"enhanced_meaning": "Own meaning."}, "go together"),
        ({"actor": "someone"}, "Actor"),
        ({"advice": "x"}, "unknown key"),
    ],
)
def test_a_rules_own_words_are_validated(extra: dict[str, object], complaint: str) -> None:
    with pytest.raises(KnowledgeError, match=complaint) as info:
        _with_rule(**extra)
    assert str(info.value).startswith("rules/t.toml: ")
