"""One rejection, one story: our own rules' replies are recognised, Postfix's are not."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from smtp_policy.adapters.maps_server import MapsService
from smtp_policy.config import Config
from smtp_policy.config.check import check_sources
from smtp_policy.config.load import default_source
from smtp_policy.config.model import ConfigSource
from smtp_policy.core.policy import RuleFacts, decide, own_replies, recognise_reply
from smtp_policy.core.rewrite import dsn_text, split_dsn_text
from smtp_policy.core.stages import Stage
from smtp_policy.data import default_knowledge
from smtp_policy.emit import EventWriter
from smtp_policy.maillog.parse import parse_line
from smtp_policy.maillog.tracker import MessageTracker
from smtp_policy.wire.socketmap import Request, Status

KB = default_knowledge()
CONFIG = """
[texts]
help_url = "https://help.local.test/mail-errors#{reason}"

[[rules]]
name = "no-spam-test"
stage = "rcpt"
sender = ["*@spam.test"]
action = "reject"
code = 554
enhanced = "5.7.1"
reason = "blocked"
text = "We do not accept mail from {sender}.\\nWrite to {recipient} another way.\\nSee {help_url}"

[[rules]]
name = "worded-by-texts"
stage = "mail"
sender = ["*@texts.test"]
action = "tempfail"

[[rules]]
name = "just-the-sender"
stage = "mail"
sender = ["*@bare.test"]
action = "reject"
code = 550
enhanced = "5.1.1"
text = "{sender}"
"""


def config_of(text: str = CONFIG, maps: str = "") -> Config:
    report = check_sources([default_source(), ConfigSource("test", text + maps)])
    assert report.config is not None, report.problems
    return report.config


def rule_reply(config: Config, stage: Stage, sender: str, recipient: str | None = None) -> str:
    """The reply a rule sends, on the wire."""
    facts = RuleFacts(client_addr="192.0.2.9", sender=sender, recipient=recipient)
    context = {"sender": sender, "recipient": recipient or "", "client_addr": "192.0.2.9"}
    decision = decide(config.rules, stage, facts, kb=KB, texts=config.texts, context=context)
    assert decision is not None
    reply = decision.reply()
    assert reply is not None
    return reply.wire()


def test_a_rules_multi_line_reply_is_recognised_with_any_session_values() -> None:
    config = config_of()
    own = own_replies(config.rules, kb=KB, texts=config.texts)
    wire = rule_reply(config, Stage.RCPT, "eve@spam.test", "alice@local.test")
    assert wire.count("\r\n") == 3
    found = recognise_reply(own, wire)
    assert found is not None and found.rule == "no-spam-test"
    assert found.decision.reason is not None and found.decision.reason.value == "blocked"
    # the mail log shows CRLF as "??"; a policy service's reply is one line after Postfix's words
    assert recognise_reply(own, wire.rstrip().replace("\r\n", "??")) is found
    one_line = "554 5.7.1 <alice@local.test>: Recipient address rejected: " + " ".join(
        line[10:] for line in wire.splitlines()
    )
    assert recognise_reply(own, one_line) is found


def test_a_reply_worded_by_texts_is_recognised() -> None:
    config = config_of()
    own = own_replies(config.rules, kb=KB, texts=config.texts)
    wire = rule_reply(config, Stage.MAIL, "bob@texts.test")
    assert wire.startswith("451")
    found = recognise_reply(own, wire)
    assert found is not None and found.rule == "worded-by-texts"


def test_an_empty_session_value_drops_a_line_and_is_still_recognised() -> None:
    config = config_of()
    own = own_replies(config.rules, kb=KB, texts=config.texts)
    wire = rule_reply(config, Stage.RCPT, "eve@spam.test", None)  # no recipient: line left out
    assert wire.count("\r\n") == 2
    assert recognise_reply(own, wire) is not None


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.1.1 <nosuch@local.test>: Recipient address rejected: User unknown in local "
        "recipient table",
        "554 5.7.1 <alice@local.test>: Relay access denied",
        # right codes, but Postfix's words around a remote's chosen sender
        "554 5.7.1 <We do not accept mail from x.>: Helo command rejected: Host not found",
        # the rule's words with another code
        "550 5.7.1 We do not accept mail from eve@spam.test. Write to a another way. See "
        "https://help.local.test/mail-errors#blocked",
    ],
)
def test_postfix_own_rejections_are_not_ours(reply: str) -> None:
    config = config_of()
    assert recognise_reply(own_replies(config.rules, kb=KB, texts=config.texts), reply) is None


def test_a_rule_of_session_values_only_is_never_recognised() -> None:
    """``text = "{sender}"`` would let a remote's address pass any rejection off as ours."""
    config = config_of()
    own = own_replies(config.rules, kb=KB, texts=config.texts)
    assert "just-the-sender" not in {o.rule for o in own}
    wire = rule_reply(config, Stage.MAIL, "x@bare.test")
    assert recognise_reply(own, wire) is None


class Recorder:
    """An EventWriter stand-in that keeps the events."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []

    def emit(self, event: object) -> None:
        self.events.append(json.loads(json.dumps(event.to_dict(), default=str)))  # type: ignore[attr-defined]

    def error(self, *args: object) -> None:
        raise AssertionError(args)


def maps(config: Config) -> tuple[MapsService, Recorder]:
    recorder = Recorder()
    writer: EventWriter = recorder  # type: ignore[assignment]
    return MapsService(KB, writer, config), recorder


def test_the_maps_server_gives_our_rule_reply_no_footer_and_its_reason() -> None:
    config = config_of()
    service, recorder = maps(config)
    wire = rule_reply(config, Stage.RCPT, "eve@spam.test", "alice@local.test")
    reply = service.lookup(Request("footer", wire.rstrip("\r\n")), "maps-1")
    assert reply.status is Status.NOTFOUND
    (event,) = recorder.events
    assert (event.get("reason"), event.get("rule"), event["by"]) == (
        "blocked",
        "no-spam-test",
        "policy",
    )
    assert event.get("friendly") is None


def test_the_maps_server_keeps_footers_under_postfix_rejections() -> None:
    service, recorder = maps(config_of())
    key = "550 5.1.1 <u@local.test>: Recipient address rejected: User unknown in local recipient"
    reply = service.lookup(Request("footer", key + " table"), "maps-1")
    assert reply.status is Status.OK and reply.data
    assert recorder.events[0].get("reason") == "user_unknown"


DEFERRAL = "4.4.1 connect to mx.remote.test[192.0.2.7]:25: Connection refused"
BOUNCE = (
    "5.1.1 host mx.remote.test[192.0.2.7] said: 550 5.1.1 <u@remote.test>: User unknown "
    "(in reply to RCPT TO command)"
)


def test_the_dsn_filter_rewrites_bounces_only_by_default() -> None:
    service, recorder = maps(config_of())
    assert service.lookup(Request("dsn", DEFERRAL), "maps-1").status is Status.NOTFOUND
    assert recorder.events[-1]["skipped"] == "deferral"
    assert recorder.events[-1]["reason"] is not None  # still explained in the event
    bounce = service.lookup(Request("dsn", BOUNCE), "maps-1")
    assert bounce.status is Status.OK and bounce.data is not None
    assert bounce.data.startswith("5.1.1 ")
    assert bounce.data.endswith(f"({BOUNCE[6:]})")  # the remote's reply, verbatim


def test_the_dsn_filter_rewrites_deferrals_when_asked() -> None:
    config = config_of(maps="\n[maps]\ndsn_deferrals = true\n")
    assert config.maps.dsn_deferrals is True
    service, _ = maps(config)
    reply = service.lookup(Request("dsn", DEFERRAL), "maps-1")
    assert reply.status is Status.OK and reply.data is not None
    assert reply.data.endswith(f"({DEFERRAL[6:]})")


def test_dsn_filter_default_is_off_and_checked() -> None:
    assert config_of().maps.dsn_deferrals is False
    report = check_sources(
        [default_source(), ConfigSource("test", '[maps]\ndsn_deferrals = "yes"\n')]
    )
    assert report.config is None
    assert any("maps.dsn_deferrals" in p for p in report.problems)


@pytest.mark.parametrize(
    "text",
    [
        "host mx[192.0.2.1] said: 550 5.1.1 User unknown (in reply to RCPT TO command)",
        "connect to mx[192.0.2.1]:25: Connection refused",
        "Command died with status 1: x. Command output: foo (bar)",
        "delivery temporarily suspended: host mx[192.0.2.1] said: 450 busy (in reply to MAIL "
        "FROM command)",
    ],
)
def test_postfix_own_reasons_are_not_taken_for_filtered_texts(text: str) -> None:
    assert split_dsn_text(text) is None


def test_a_filtered_text_splits_into_our_words_and_the_original() -> None:
    original = BOUNCE[6:]
    text = dsn_text("5.1.1", original, ["The address (as typed) does not exist."])
    assert text is not None
    assert split_dsn_text(text[6:]) == ("The address (as typed) does not exist.", original)


LOG = "Nov 28 12:19:08 vm postfix/{program}[2133]: {rest}"


def reply_events(lines: list[str], config: Config | None = None) -> list[dict[str, object]]:
    own = own_replies(config.rules, kb=KB, texts=config.texts) if config else ()
    tracker = MessageTracker(KB, year=2026, own=own)
    out = []
    for line in lines:
        record = parse_line(line)
        assert record is not None, line
        for tracked in tracker.track(record, datetime(2026, 11, 28, tzinfo=UTC)):
            form = tracked.to_event().to_dict()
            assert tracked.to_form() == form  # the follower's form: the same, rule included
            out.append(form)
    return [e for e in out if e["event"] == "reply"]


def delivery_line(text: str) -> str:
    rest = (
        "7EE668039: to=<u@remote.test>, relay=mx.remote.test[192.0.2.7]:25, delay=0.2, "
        f"delays=0.1/0/0.05/0.05, dsn=5.1.1, status=bounced ({text})"
    )
    return LOG.format(program="smtp", rest=rest)


def test_the_follower_reads_a_filtered_bounce_as_the_unfiltered_one() -> None:
    original = BOUNCE[6:]
    filtered = dsn_text("5.1.1", original, ["The address does not exist."])
    assert filtered is not None
    plain, rewritten = reply_events([delivery_line(original), delivery_line(filtered[6:])])
    for key in ("reason", "code", "enhanced", "class", "stage", "text"):
        assert plain[key] == rewritten[key], key
    assert rewritten.get("friendly") == "The address does not exist."
    assert plain.get("friendly") is None


def test_the_follower_gives_a_rule_rejection_the_rules_reason_and_name() -> None:
    config = config_of()
    wire = rule_reply(config, Stage.RCPT, "eve@spam.test", "alice@local.test")
    reply = wire.rstrip("\r\n").replace("\r\n", "??")
    rest = (
        f"NOQUEUE: milter-reject: RCPT from localhost[127.0.0.1]: {reply}; "
        "from=<eve@spam.test> to=<alice@local.test> proto=ESMTP helo=<client.test>"
    )
    line = LOG.format(program="smtpd", rest=rest)
    (without,) = reply_events([line])
    (event,) = reply_events([line], config)
    assert (event.get("reason"), event.get("rule")) == ("blocked", "no-spam-test")
    assert without.get("rule") != "no-spam-test"


def test_preview_and_the_maps_server_answer_a_rule_reply_the_same() -> None:
    """answer_lookup is the one path: our rule's reply gets no footer and names the rule."""
    from functools import partial

    from smtp_policy.core.policy import recognised_rule
    from smtp_policy.core.rewrite import answer_lookup

    config = config_of()
    reply = rule_reply(config, Stage.RCPT, "<eve@spam.test>", "<bob@local.test>")
    own = partial(recognised_rule, own_replies(config.rules, kb=KB, texts=config.texts))
    answer = answer_lookup("footer", reply, KB, config.texts, own_rule=own)
    assert answer is not None
    assert (answer.text, answer.rule, answer.entry) == (None, "no-spam-test", "rules.no-spam-test")
    postfix = answer_lookup("footer", "550 5.1.1 <x@local.test>: User unknown", KB, config.texts,
                            own_rule=own)  # fmt: skip
    assert postfix is not None and postfix.text and postfix.rule is None
    deferral = answer_lookup("dsn", "4.2.2 452 4.2.2 Mailbox full", KB, config.texts,
                             dsn_deferrals=False)  # fmt: skip
    assert deferral is not None and (deferral.text, deferral.skipped) == (None, "deferral")


def test_a_rule_made_reply_is_decided_by_the_rule() -> None:
    """The admin's rule decided: decided_by says so in every event about it, not its codes."""
    config = config_of()
    facts = RuleFacts(client_addr="192.0.2.9", sender="<eve@spam.test>", recipient="<b@x.test>")
    decision = decide(config.rules, Stage.RCPT, facts, kb=KB, texts=config.texts, context={})
    assert decision is not None and decision.explanation is not None
    assert decision.explanation.to_dict()["decided_by"] == "rule"
