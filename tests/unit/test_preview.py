"""The dry runs' pure parts: preview's reading of a reply and of the footer, rules test's facts."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from smtp_policy.adapters.maps_server import MapsService
from smtp_policy.commands.preview import (
    NotAReplyError,
    PostfixReply,
    bounce_line,
    client_reads,
    dsn_key,
    parse_postfix_reply,
    preview_result,
    render_preview,
)
from smtp_policy.commands.rules import RuleTest, facts_at, render, result_dict
from smtp_policy.config import Config, ConfigSource, default_source, validate
from smtp_policy.core.explain import explain_text
from smtp_policy.core.model import Explanation
from smtp_policy.core.policy import RuleFacts, decide
from smtp_policy.core.rewrite import answer_lookup
from smtp_policy.core.stages import Stage
from smtp_policy.core.texts import BUILT_IN_ENTRY, TextsConfig, chosen_template
from smtp_policy.data import default_knowledge
from smtp_policy.data.i18n import bounce_words
from smtp_policy.emit import EventWriter
from smtp_policy.wire.socketmap import Request

KB = default_knowledge()
HELO = "504 5.5.2 <ws42>: Helo command rejected: need fully-qualified hostname"
TEXTS = """
[texts]
help_url = "https://help.mail.test/errors#{reason}"
[texts.reason.user_unknown]
external = "No such person here. {action}"
internal = "Not delivered: {summary}."
[texts.enhanced."5.7.1"]
external = "Refused by policy."
[texts.enhanced."5.7.1".lang.de]
external = "Abgelehnt."
"""
RULES = """
[[rules]]
name = "partners-no-lists"
stage = "rcpt"
sender = ["*@partner.test"]
recipient = ["all@*"]
action = "reject"
code = 550
enhanced = "5.7.1"
reason = "blocked"
text = "Lists are closed to partners.\\nAsk the owner of {recipient}."

[[rules]]
name = "big-later"
stage = "mail"
size_over = 1000
action = "tempfail"
"""


def _config(text: str) -> Config:
    config, problems = validate([default_source(), ConfigSource("test.toml", text)])
    assert config is not None, problems
    return config


# --- preview --------------------------------------------------------------------------------


def test_a_reply_is_read_with_its_literal_enhanced_code() -> None:
    reply = parse_postfix_reply(HELO)
    assert reply == PostfixReply(
        504, "5.5.2", ("5.5.2 <ws42>: Helo command rejected: need fully-qualified hostname",)
    )
    assert reply.key == HELO
    assert parse_postfix_reply("421").texts == ("",)
    multi = parse_postfix_reply("550-5.7.1 one\r\n550 5.7.1 two")
    assert multi.key == "550-5.7.1 one\r\n550 5.7.1 two"


@pytest.mark.parametrize(
    "text",
    ["hello", "", "User unknown 550", "5501 x", "550-5.1.1 a", "550 a\n550 b", "550-a\n451 b"],
)
def test_what_is_not_a_reply_is_refused(text: str) -> None:
    with pytest.raises(NotAReplyError, match="not an SMTP reply"):
        parse_postfix_reply(text)


def test_the_footer_adds_lines_with_the_code_and_enhanced_code() -> None:
    reply = parse_postfix_reply("550 5.1.1 <a@b.test>: User unknown")
    assert client_reads(reply, "First.\\nCost: 5 $$") == [
        "550-5.1.1 <a@b.test>: User unknown",
        "550-5.1.1 First.",
        "550 5.1.1 Cost: 5 $",
    ]
    assert client_reads(reply, "\\c See below.\\nMore.") == [
        "550-5.1.1 <a@b.test>: User unknown See below.",
        "550 5.1.1 More.",
    ]
    assert client_reads(reply, None) == ["550 5.1.1 <a@b.test>: User unknown"]
    bare = parse_postfix_reply("554 Go away")
    assert client_reads(bare, "Why.") == ["554-Go away", "554 Why."]


def test_dsn_key_and_bounce_line() -> None:
    assert dsn_key(parse_postfix_reply(HELO)) == f"5.5.2 {HELO}"
    assert dsn_key(parse_postfix_reply("451 Try later")) == "4.0.0 451 Try later"
    assert bounce_line("5.1.1 Gone (550 x)", "<bob@b.test>") == "<bob@b.test>: Gone (550 x)"
    assert bounce_line("5.1.1 Gone (550 x)", None) == "Gone (550 x)"
    assert bounce_line(None, "bob@b.test") is None


def test_preview_answers_exactly_what_the_maps_server_answers() -> None:
    config = _config(TEXTS)
    at = datetime(2026, 12, 6, 14, 35, 2, tzinfo=UTC)
    maps = MapsService(KB, EventWriter(io.StringIO()), config, clock=lambda: at)
    bounce = (bounce_words(config.bounce.language), at)
    for reply in (HELO, "550 5.1.1 <a@b.test>: User unknown", "554 5.7.1 Relay access denied"):
        key = parse_postfix_reply(reply).key
        ours = answer_lookup("footer", key, KB, config.texts)
        assert ours is not None
        assert maps.lookup(Request("footer", key), "t").data == (ours.text or "")
        dkey = dsn_key(parse_postfix_reply(reply))
        dsn = answer_lookup("dsn", dkey, KB, config.texts, bounce=bounce)
        assert dsn is not None
        assert maps.lookup(Request("dsn", dkey), "t").data == (dsn.text or "")
    assert answer_lookup("other", "x", KB, config.texts) is None


def test_preview_names_the_text_entry_and_the_knowledge_rule() -> None:
    config = _config(TEXTS)
    reply = parse_postfix_reply("550 5.1.1 <bob@b.test>: Recipient address rejected: User unknown")
    footer = answer_lookup("footer", reply.key, KB, config.texts)
    dsn = answer_lookup("dsn", dsn_key(reply), KB, config.texts)
    assert footer is not None and dsn is not None
    result = preview_result(reply, footer, dsn, recipient="bob@b.test", sender="a@c.test")
    assert result.get("reason") == "user_unknown"
    assert result.get("rule")
    assert result["client_reads"][-1].startswith("550 5.1.1 No such person here.")  # type: ignore[index]
    assert result["footer"]["text_entry"] == "texts.reason.user_unknown.external"  # type: ignore[index]
    assert result["dsn"]["text_entry"] == "texts.reason.user_unknown.internal"  # type: ignore[index]
    assert result["dsn"]["bounce_line"].startswith("<bob@b.test>: Not delivered:")  # type: ignore[index]
    text = render_preview(result)
    assert text.index("What the client reads") < text.index("What the bounce to <a@c.test>")
    assert "texts.reason.user_unknown.external" in text
    assert str(result.get("rule")) in text


def test_a_success_gets_no_footer_and_no_dsn_text() -> None:
    config = _config("")
    reply = parse_postfix_reply("250 2.0.0 Ok")
    footer = answer_lookup("footer", reply.key, KB, config.texts)
    dsn = answer_lookup("dsn", dsn_key(reply), KB, config.texts)
    assert footer is not None and dsn is not None
    result = preview_result(reply, footer, dsn)
    assert result["client_reads"] == ["250 2.0.0 Ok"]
    assert "no footer" in render_preview(result)
    assert "no DSN text" in render_preview(result)


def test_chosen_template_names_its_key() -> None:
    texts = _config(TEXTS).texts
    relay = explain_of("554 5.7.1 Relay access denied")
    assert chosen_template(texts, relay, "external")[0] == 'texts.enhanced."5.7.1".external'
    assert chosen_template(texts, relay, "external", "de") == (
        'texts.enhanced."5.7.1".lang.de.external',
        "Abgelehnt.",
    )
    assert chosen_template(texts, relay, "internal")[0] == 'texts.enhanced."5.7.1".external'
    full = explain_of("452 4.2.2 Mailbox full")
    assert chosen_template(texts, full, "external")[0] == "texts.default.external"
    assert chosen_template(TextsConfig(), full, "internal")[0] == "texts.default.external"
    empty = TextsConfig(default=TextsConfig().default.__class__())
    assert chosen_template(empty, full, "external")[0] == BUILT_IN_ENTRY


def explain_of(reply: str) -> Explanation:
    return explain_text(reply, KB)


# --- rules test -----------------------------------------------------------------------------


def test_facts_not_known_at_the_stage_are_left_out_with_a_note() -> None:
    given: dict[str, object] = {
        "client": "192.0.2.7",
        "helo": "ws42",
        "sender": "a@partner.test",
        "recipient": "all@corp.test",
        "size": 5000,
        "authenticated": True,
    }
    facts, notes = facts_at(Stage.MAIL, given)
    assert facts == RuleFacts("192.0.2.7", "a@partner.test", None, 5000, True, "ws42")
    assert notes == ["--recipient is not known yet at stage mail: left out"]
    facts, notes = facts_at(Stage.CONNECT, given)
    assert facts == RuleFacts(client_addr="192.0.2.7")
    assert len(notes) == 5
    facts, _ = facts_at(Stage.MAIL, {"sender": "", "authenticated": False})
    assert facts.sender == "" and facts.authenticated is False  # "" is the null sender


def _test(stage: Stage, **given: object) -> RuleTest:
    config = _config(RULES)
    facts, notes = facts_at(stage, given)
    decision = decide(
        config.rules,
        stage,
        facts,
        kb=KB,
        texts=config.texts,
        context={"recipient": facts.recipient or ""},
    )
    count = sum(1 for r in config.rules if r.stage is stage)
    return RuleTest(stage, facts, decision, "external", count, tuple(notes))


def test_the_first_matching_rule_fires_and_its_reply_is_shown() -> None:
    result = _test(Stage.RCPT, sender="x@partner.test", recipient="all@corp.test")
    data = result_dict(result)
    assert data["fires"] is True
    assert data.get("rule") == "partners-no-lists"
    assert data["reply"] == [
        "550-5.7.1 Lists are closed to partners.",
        "550 5.7.1 Ask the owner of all@corp.test.",
    ]
    assert data.get("reason") == "blocked"
    text = render(result)
    assert (
        text.splitlines()[0]
        == "Rule 'partners-no-lists' fires at stage rcpt: reject, reason blocked"
    )
    assert "  550 5.7.1 Ask the owner of all@corp.test." in text


def test_no_rule_fires() -> None:
    result = _test(Stage.RCPT, sender="x@other.test", recipient="all@corp.test")
    assert result_dict(result)["fires"] is False
    assert result_dict(result)["reply"] == []
    assert render(result) == "No rule fires at stage rcpt (1 rule for this stage)."
    assert render(_test(Stage.DATA)).startswith("No rule fires at stage data (0 rules")
