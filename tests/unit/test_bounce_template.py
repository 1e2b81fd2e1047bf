"""`smtp-policy postfix bounce-template`, validated by Postfix's own postconf -b."""

from __future__ import annotations

import re
import shutil
import tomllib
from datetime import UTC, datetime
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest

from smtp_policy.config import ConfigSource, check_sources, default_source, validate
from smtp_policy.core.bounce import (
    TEMPLATES,
    BounceConfig,
    BounceWords,
    bounce_file,
    help_link,
    recipient_lines,
    render_bounce_templates,
    words_from_table,
)
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.explain import explain_text
from smtp_policy.core.knowledge import Rule
from smtp_policy.core.model import Actor, Reason
from smtp_policy.core.rewrite import answer_lookup, dsn_text
from smtp_policy.core.sanitize import clean_text
from smtp_policy.core.texts import RULE_KEYS, TextsConfig, TextSet
from smtp_policy.data import default_knowledge
from smtp_policy.data.i18n import LANGUAGES, bounce_words

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
DATA = Path(__file__).resolve().parents[2] / "smtp_policy" / "data"
KB = default_knowledge()
AT = datetime(2026, 12, 6, 14, 35, 2, tzinfo=UTC)


def test_bad_templates_are_refused_with_every_problem() -> None:
    """Unknown names, multi-line or $ headers and an early EOF line are all reported."""
    with pytest.raises(ConfigError) as info:
        render_bounce_templates(
            {
                "failure": {"subject": "two\nlines", "body": "text\nEOF\nmore"},
                "delay": {"from": "costs $5"},
                "bogus": {},
            }
        )
    assert len(info.value.problems) == 4
    assert any("bogus" in p for p in info.value.problems)
    assert any("failure.body" in p for p in info.value.problems)


# --- the NDR layout: templates, languages, recipient entries, [bounce] ------------------------

LANGUAGE_NAMES = ("en", "de", "fr")


def test_every_language_has_every_text() -> None:
    """Each shipped language loads, with every template, actor and (not English) reason."""
    assert set(LANGUAGE_NAMES) == set(LANGUAGES)
    for language in LANGUAGES:
        words = bounce_words(language)
        assert set(words.templates) == set(TEMPLATES)
        assert set(words.who) == set(Actor)
        if language != "en":
            assert set(words.reasons) == set(Reason)
            assert all(w.summary and w.action for w in words.reasons.values())


def test_a_language_missing_a_reason_is_refused() -> None:
    table = tomllib.loads(
        (DATA / "i18n" / "de.toml").read_text(encoding="utf-8").replace("[reason.suspend]", "[x]")
    )
    with pytest.raises(ConfigError) as info:
        words_from_table("de", table)
    assert "de: reason.suspend.summary: missing text" in info.value.problems


@pytest.mark.parametrize("language", LANGUAGE_NAMES)
def test_failure_template_is_short_and_claims_only_what_is_true(language: str) -> None:
    """No signature or generic advice; the contact from [bounce]; headers-only is said."""
    config = BounceConfig(language, "helpdesk@local.test", "https://help.local.test/mail")
    body = _failure_body(bounce_file(config, bounce_words(language)))
    assert len(body.strip().splitlines()) <= 9
    assert "helpdesk@local.test" in body
    assert "https://help.local.test/mail" in body
    assert "$bounce_size_limit" in body  # "attached, or only its headers above the limit"
    assert "postmaster@" not in body
    assert "$mydomain" not in body
    assert "The mail system at" not in body


@pytest.mark.parametrize("language", LANGUAGE_NAMES)
def test_without_a_contact_the_bounce_names_the_mail_administrator(language: str) -> None:
    words = bounce_words(language)
    body = _failure_body(bounce_file(BounceConfig(language), words))
    assert words.mail_administrator in body
    assert "{help_url}" not in body and "{contact}" not in body
    assert "http" not in body  # the help line is left out with no link


def test_german_and_french_subjects_are_encoded_words() -> None:
    """Headers must be ASCII: non-ASCII subjects go out as RFC 2047 encoded words."""
    rendered = bounce_file(BounceConfig("fr"), bounce_words("fr"))
    subject = next(line for line in rendered.splitlines() if line.startswith("Subject:"))
    assert subject.isascii()
    assert str(make_header(decode_header(subject[len("Subject: ") :]))).startswith("Non remis")
    assert "Charset: utf-8" in rendered


def test_overrides_replace_the_wording_and_placeholders_are_checked() -> None:
    config = BounceConfig(
        "en",
        "help$desk@local.test",
        templates={"failure": {"subject": "Bounced", "body": "{contact}"}},
    )
    rendered = bounce_file(config, bounce_words("en"))
    assert "Subject: Bounced" in rendered
    assert "help$$desk@local.test" in rendered  # $ is literal for Postfix
    bad = BounceConfig("en", templates={"delay": {"body": "{sender} ${myhostname}"}})
    with pytest.raises(ConfigError) as info:
        bounce_file(bad, bounce_words("en"))
    assert info.value.problems == [
        "bounce.delay.body: unknown placeholder {sender} (use {contact} {help_url})"
    ]


GMAIL = (
    "host mx.remote.test[192.0.2.1] said: 550-5.1.1 The email account that you tried to "
    "reach does not exist. 550 5.1.1 Learn more at https://support.google.com/mail/?p=NoSuchUser"
    " - gsmtp (in reply to RCPT TO command)"
)


@pytest.mark.parametrize("language", LANGUAGE_NAMES)
def test_recipient_entry_is_in_the_ndr_order(language: str) -> None:
    """What happened and who fixes it; what to do; the reply's own link; then the admins."""
    words = bounce_words(language)
    lines = recipient_lines(explain_text(GMAIL, KB), TextsConfig(), words, AT)
    assert len(lines) == 4
    lines = [clean_text(line) for line in lines]
    assert lines[0].endswith(_ascii(words.who[Actor.SENDER]))
    assert lines[1].startswith(_ascii(words.what_to_do))
    link = "https://support.google.com/mail/?p=NoSuchUser"  # the reply's own, not an article
    assert lines[2] == f"{_ascii(words.more_information)} <{link}>."
    assert lines[3] == _ascii(words.for_administrators.replace("{time}", "2026-12-06 14:35:02 UTC"))
    text = dsn_text("5.1.1", GMAIL, lines)
    assert text is not None and text.isascii()
    assert text.endswith(f"({GMAIL})")  # the remote's reply, word for word, last
    if language == "de":
        assert "Empfaengeradresse existiert nicht" in lines[0]


def test_a_transient_reply_gets_the_translated_retry_advice() -> None:
    words = bounce_words("de")
    explanation = explain_text("host mx[192.0.2.1] said: 452 4.2.2 Mailbox full", KB)
    lines = recipient_lines(explanation, TextsConfig(), words, AT)
    lines = [clean_text(line) for line in lines]
    assert lines[1].endswith(_ascii(words.reasons[Reason.MAILBOX_FULL].transient_action or ""))
    assert _ascii(words.who[Actor.NOBODY]) in lines[0]


# --- a rule's own words in every language ----------------------------------------------------

TRANSLATED = ("de", "fr")
HELO = "504 5.5.2 <ws42>: Helo command rejected: need fully-qualified hostname"


def _own_words(rule: Rule) -> set[str]:
    return {key for key in RULE_KEYS if getattr(rule, key)}


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_rule_with_its_own_words_speaks_every_language(language: str) -> None:
    """A rule's own summary and action are translated, exactly those and for no other rule."""
    words = bounce_words(language)
    own = {rule.id: _own_words(rule) for rule in KB.rules if _own_words(rule)}
    assert len(own) > 80
    translated = {
        rule_id: {key for key in RULE_KEYS if getattr(entry, key)}
        for rule_id, entry in words.rules.items()
    }
    assert translated == own


def _de_table() -> dict[str, Any]:
    return tomllib.loads((DATA / "i18n" / "de.toml").read_text(encoding="utf-8"))


def _rules_own() -> dict[str, frozenset[str]]:
    return {rule.id: frozenset(_own_words(rule)) for rule in KB.rules}


def test_a_rule_without_its_translation_is_refused() -> None:
    table = _de_table()
    del table["rule"]["postfix.helo_not_fqdn"]
    table["rule"]["postfix.pipelining"].pop("action")
    with pytest.raises(ConfigError) as info:
        words_from_table("de", table, _rules_own())
    assert sorted(info.value.problems) == [
        "de: rule.postfix.helo_not_fqdn.action: missing text",
        "de: rule.postfix.helo_not_fqdn.summary: missing text",
        "de: rule.postfix.pipelining.action: missing text",
    ]


def test_a_translation_of_words_no_rule_has_is_refused() -> None:
    """A rule id that does not exist, a key the rule has no English for, an unknown key."""
    table = _de_table()
    table["rule"]["postfix.no_such_rule"] = {"summary": "Gibt es nicht"}
    table["rule"]["microsoft.recipient_not_found"]["action"] = "Nichts"
    table["rule"]["postfix.helo_not_fqdn"]["explanation"] = "Lang"
    with pytest.raises(ConfigError) as info:
        words_from_table("de", table, _rules_own())
    assert sorted(info.value.problems) == [
        "de: rule.microsoft.recipient_not_found.action: the rule has no action of its own",
        "de: rule.postfix.helo_not_fqdn.explanation: unknown key (use summary, action)",
        "de: rule.postfix.no_such_rule: not a rule",
    ]


def test_english_rules_speak_only_in_the_knowledge() -> None:
    with pytest.raises(ConfigError) as info:
        words_from_table("en", {**_en_table(), "rule": {"postfix.helo_not_fqdn": {"summary": "x"}}})
    assert info.value.problems == [
        "en: rule.postfix.helo_not_fqdn: English uses the rule's own words"
    ]


def _en_table() -> dict[str, Any]:
    return tomllib.loads((DATA / "i18n" / "en.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("language", TRANSLATED)
def test_a_bounce_gives_the_rules_own_advice_in_its_language(language: str) -> None:
    """The HELO rule's precise words, not the reason's (a blocklist), in German and French."""
    words = bounce_words(language)
    explanation = explain_text(HELO, KB)
    assert explanation.classification.rule == "postfix.helo_not_fqdn"
    own = words.rules["postfix.helo_not_fqdn"]
    assert own.summary and own.action
    lines = [clean_text(line) for line in recipient_lines(explanation, TextsConfig(), words, AT)]
    assert lines[0].startswith(_ascii(own.summary).rstrip("."))
    assert lines[0].endswith(_ascii(words.who[Actor.SENDER_ADMIN]))
    assert lines[1] == f"{_ascii(words.what_to_do)} {_ascii(own.action)}"
    blocked = words.reasons[Reason.BLOCKED]
    assert _ascii(blocked.summary) not in lines[0] and _ascii(blocked.action) not in lines[1]


@pytest.mark.parametrize("language", TRANSLATED)
def test_a_rule_with_only_a_summary_takes_the_reasons_translated_action(language: str) -> None:
    words = bounce_words(language)
    reply = "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    explanation = explain_text(reply, KB)
    assert explanation.classification.rule == "microsoft.recipient_not_found"
    lines = [clean_text(line) for line in recipient_lines(explanation, TextsConfig(), words, AT)]
    own = words.rules["microsoft.recipient_not_found"]
    assert own.summary and own.action is None
    assert lines[0].startswith(_ascii(own.summary))
    assert lines[1].endswith(_ascii(words.reasons[Reason.USER_UNKNOWN].action))


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_rules_translated_entry_is_ascii_and_its_own(language: str) -> None:
    """Each rule's sample, in a bounce: the rule's translated words, ASCII only."""
    words = bounce_words(language)
    checked = 0
    for rule in KB.rules:
        own = words.rules.get(rule.id)
        if own is None or not rule.samples:
            continue
        explanation = explain_text(rule.samples[0], KB)
        if explanation.classification.rule != rule.id:
            continue  # the sample is decided by a stronger rule: tested with that one
        lines = recipient_lines(explanation, TextsConfig(), words, AT)
        text = dsn_text("5.0.0", rule.samples[0], lines)
        assert text is not None and text.isascii(), rule.id
        if own.summary:
            assert clean_text(lines[0]).startswith(_ascii(own.summary).rstrip(".")), rule.id
        if own.action:
            assert clean_text(lines[1]).endswith(_ascii(own.action)), rule.id
        checked += 1
    assert checked > 80


#: Words that name our own sources or files (as tests/unit/test_rule_advice.py checks in English).
SOURCE_WORDS = re.compile(
    r"\b(?:seed|guide|guides|sisimai|corpus|research|anchors?|kumomta)\b|"
    r"\.(?:toml|md|jsonl|txt|py)\b",
    re.IGNORECASE,
)


@pytest.mark.parametrize("language", TRANSLATED)
def test_no_translation_names_our_sources(language: str) -> None:
    words = bounce_words(language)
    texts = [t for w in words.rules.values() for t in (w.summary, w.action) if t]
    texts += [
        t for w in words.reasons.values() for t in (w.summary, w.action, w.transient_action) if t
    ]
    assert [t for t in texts if SOURCE_WORDS.search(t.replace(".forward", "forward"))] == []


def test_an_admin_text_for_bounce_readers_still_decides() -> None:
    """[texts] wording for the internal audience wins over the layout (as before)."""
    texts = TextsConfig(reason={Reason.USER_UNKNOWN: TextSet(internal="No such person here.")})
    explanation = explain_text(GMAIL, KB)
    bounce = (bounce_words("en"), AT)
    worded = answer_lookup("dsn", f"5.1.1 {GMAIL}", KB, texts, bounce=bounce)
    assert worded is not None and worded.text is not None
    assert worded.text.startswith("5.1.1 No such person here. (host mx.remote.test")
    layout = answer_lookup("dsn", f"5.1.1 {GMAIL}", KB, TextsConfig(), bounce=bounce)
    lines = recipient_lines(explanation, TextsConfig(), bounce_words("en"), AT)
    assert layout is not None and layout.entry == "bounce"
    assert layout.text == dsn_text("5.1.1", GMAIL, lines)


def test_without_a_link_in_the_reply_the_provider_page_or_texts_link_is_used() -> None:
    explanation = explain_text("host mx[192.0.2.1] said: 550 5.1.1 User unknown", KB)
    texts = TextsConfig(help_url="https://help.local.test/{reason}")
    assert help_link(explanation, texts) == "https://help.local.test/user_unknown"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[bounce]\nlanguage = "es"', "b.toml:2: bounce.language: unknown language 'es'"),
        ('[bounce]\ncontact = "postmaster"', "b.toml:2: bounce.contact: 'postmaster' is not a"),
        ('[bounce]\nhelp_url = "help.local.test"', "b.toml:2: bounce.help_url: 'help.local.test'"),
        ('[bounce.failure]\nbody = "{sender}"', "b.toml:2: bounce.failure.body: unknown placeh"),
        ('[bounce.failure]\nsubject = "a $5 bill"', "b.toml:2: bounce.failure.subject: headers"),
        ("[bounce.bogus]\nx = 1", "b.toml:1: bounce.bogus: unknown key 'bogus'"),
    ],
)
def test_check_config_finds_bad_bounce_values_with_file_and_line(text: str, problem: str) -> None:
    config, problems = validate([default_source(), ConfigSource("b.toml", text)])
    assert config is None
    (found,) = problems
    assert found.startswith(problem), found


def test_check_config_names_an_untranslated_rule_in_the_shipped_texts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shipped language that lacks a rule's words is one clear problem, not a traceback."""

    def broken(language: str) -> BounceWords:
        raise ConfigError([f"{language}: rule.postfix.helo_not_fqdn.summary: missing text"])

    monkeypatch.setattr("smtp_policy.config.check.bounce_words", broken)
    config, problems = validate([default_source(), ConfigSource("b.toml", _GERMAN)])
    assert config is None
    assert [str(p) for p in problems] == [
        "b.toml:2: bounce.language: the shipped texts (smtp_policy/data/i18n/de.toml) are "
        "incomplete: rule.postfix.helo_not_fqdn.summary: missing text"
    ]


_GERMAN = '[bounce]\nlanguage = "de"'


def test_check_config_warns_about_an_example_contact() -> None:
    source = ConfigSource("b.toml", '[bounce]\ncontact = "help@example.com"\n')
    report = check_sources([default_source(), source])
    assert report.config is not None
    assert report.config.bounce.contact == "help@example.com"
    assert any(w.startswith("b.toml:2: bounce.contact: example.com") for w in report.warnings)


def _failure_body(rendered: str) -> str:
    block = rendered.split("failure_template = <<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    return block.split("\n\n", 1)[1]  # after the headers


def _ascii(text: str) -> str:
    german: dict[str, str | int | None] = {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"}
    german |= {"Ä": "Ae", "Ö": "Oe", "Ü": "Ue"}
    return clean_text(text.translate(str.maketrans(german)))
