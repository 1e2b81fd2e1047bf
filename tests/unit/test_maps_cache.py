"""The maps server's answer cache: the same answers as without it, one event per lookup."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

from smtp_policy.adapters.maps_server import MapsService
from smtp_policy.config import Config
from smtp_policy.core.explain import explain_text
from smtp_policy.core.rewrite import answer_lookup
from smtp_policy.data import default_knowledge
from smtp_policy.data.i18n import bounce_words
from smtp_policy.emit import EventWriter
from smtp_policy.wire.socketmap import Request

KB = default_knowledge()
FOOTER = "550 5.1.1 <a@b.test>: Recipient address rejected: User unknown"
DSN = "5.1.1 host mx.b.test[192.0.2.1] said: 550 5.1.1 No such user (in reply to RCPT TO command)"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 6, 14, 35, 2, 100, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _service(clock: Clock) -> tuple[MapsService, io.StringIO]:
    out = io.StringIO()
    return MapsService(KB, EventWriter(out), Config(), clock=clock), out


def _expected(name: str, key: str, at: datetime) -> str:
    config = Config()
    bounce = (bounce_words(config.bounce.language), at)
    answer = answer_lookup(name, key, KB, config.texts, bounce=bounce)
    assert answer is not None
    return answer.text or ""


def test_repeated_lookups_answer_the_same_and_each_is_an_event() -> None:
    clock = Clock()
    maps, out = _service(clock)
    for _ in range(3):
        assert maps.lookup(Request("footer", FOOTER), "t").data == _expected(
            "footer", FOOTER, clock.now
        )
        assert maps.lookup(Request("dsn", DSN), "t").data == _expected("dsn", DSN, clock.now)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["map"] for e in events if e["event"] == "lookup"] == ["footer", "dsn"] * 3


def test_a_bounce_text_names_the_time_of_its_own_lookup() -> None:
    clock = Clock()
    maps, _ = _service(clock)
    first = maps.lookup(Request("dsn", DSN), "t").data
    clock.now += timedelta(milliseconds=500)  # same second: the same text
    assert maps.lookup(Request("dsn", DSN), "t").data == first
    clock.now += timedelta(seconds=1)
    later = maps.lookup(Request("dsn", DSN), "t").data
    assert later != first
    assert later == _expected("dsn", DSN, clock.now)


def test_reconfigure_forgets_the_answers() -> None:
    clock = Clock()
    maps, _ = _service(clock)
    maps.lookup(Request("footer", FOOTER), "t")
    assert maps._answers
    maps.reconfigure(Config())
    assert not maps._answers


def test_explain_text_hands_out_one_explanation_per_distinct_text() -> None:
    assert explain_text(FOOTER, KB) is explain_text(FOOTER, KB)
    assert explain_text(FOOTER, KB).classification.reply.raw == FOOTER
