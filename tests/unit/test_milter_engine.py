"""Our milter engine (adapters/_milter_engine.py) driven in process: bytes in, frames out."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from typing import Any

import Milter
import pytest

from smtp_policy.adapters import _milter_engine as engine_module
from smtp_policy.adapters._milter_engine import MilterConnection, MilterContext, MilterServer
from smtp_policy.adapters.milter import (
    MilterFactory,
    MilterPolicy,
    MilterSettings,
    policy_from_rules,
)
from smtp_policy.core.model import EnhancedCode, Reason
from smtp_policy.core.policy import PolicyRule, RuleAction, compile_pattern
from smtp_policy.core.stages import Stage
from smtp_policy.data import default_knowledge
from smtp_policy.emit import EventWriter
from smtp_policy.wire import milter as w

Ev = dict[str, Any]
OFFER = w.OptionNegotiation(6, w.ALL_ACTIONS, w.ALL_PROTOCOL)
POSTFIX = w.Macros(b"C", ((b"j", b"mx.test"), (b"v", b"Postfix 3.7.11")))


class FakeTransport(asyncio.Transport):
    """Collects what the engine writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class Harness:
    """One engine connection with a fake MTA on the other side."""

    def __init__(self, events: io.StringIO, server: MilterServer) -> None:
        self.events = events
        self.server = server
        self.transport = FakeTransport()
        self.connection = MilterConnection(server)
        self.connection.connection_made(self.transport)

    def send(self, *commands: w.Command, eof: bool = False) -> list[w.Frame]:
        """Feed commands in one chunk; the frames written back since the last call."""
        self.transport.written.clear()
        self.connection.data_received(b"".join(c.encode() for c in commands))
        if eof:
            self.connection.eof_received()
            self.connection.connection_lost(None)
        decoder = w.FrameDecoder()
        decoder.feed(bytes(self.transport.written))
        out = []
        while (frame := decoder.next()) is not None:
            out.append(frame)
        return out

    def all(self, kind: str | None = None) -> list[Ev]:
        got = [json.loads(line) for line in self.events.getvalue().splitlines()]
        return [e for e in got if kind is None or e["event"] == kind]


@pytest.fixture(name="engine")
def _engine(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Harness]:
    """``engine(policy=..., noreply=...)``: a negotiated connection (run inside a loop)."""
    kb = default_knowledge()

    def make(
        policy: MilterPolicy | None = None, *, noreply: bool = True, event_mode: str = "stages"
    ) -> Harness:
        buffer = io.StringIO()
        writer = EventWriter(buffer)
        settings = MilterSettings(writer, kb, policy or MilterPolicy(), None, noreply, event_mode)
        monkeypatch.setattr(Milter, "factory", MilterFactory(settings))
        errors: list[tuple[BaseException, object]] = []
        problems: list[str] = []
        server = MilterServer(  # as the milter command wires it
            timeout=60,
            on_error=lambda exc, m: errors.append((exc, m)),
            on_protocol_error=problems.append,
            hold_events=writer.hold,
            release_events=writer.release,
        )
        harness = Harness(buffer, server)
        harness.errors = errors  # type: ignore[attr-defined]
        harness.problems = problems  # type: ignore[attr-defined]
        return harness

    return make


def run(test: Callable[[], None]) -> None:
    async def inside() -> None:
        test()

    asyncio.run(inside())


def session(n: int = 0) -> list[w.Command]:
    return [
        POSTFIX,
        w.Connect(b"client.example", b"4", 40000 + n, b"192.0.2.7"),
        w.Helo(f"helo-{n}.test".encode()),
        w.Mail((f"<s-{n}@example.org>".encode(), b"SIZE=10")),
        w.Rcpt((b"<alice@local.test>",)),
    ]


def test_negotiation_answers_with_steps_no_reply_flags_and_macro_lists(
    engine: Callable[..., Harness],
) -> None:
    def test() -> None:
        h = engine()
        (answer,) = h.send(OFFER)
        got = w.OptionNegotiation.decode(answer.data)
        assert got.version == 6
        assert got.actions == w.SETSYMLIST | w.QUARANTINE
        assert got.protocol & (w.NR_CONN | w.NR_HELO | w.NR_MAIL | w.NR_RCPT | w.NR_DATA)
        assert got.protocol & w.RCPT_REJ and got.protocol & w.NOUNKNOWN
        assert dict(got.symlists)[w.M_ENVRCPT] == b"i {rcpt_addr} {rcpt_host} {rcpt_mailer}"

    run(test)


def test_every_queued_step_is_handled_before_end_of_file(engine: Callable[..., Harness]) -> None:
    """The root fix: steps, ABORT and QUIT arrive with end-of-file right behind them."""

    def test() -> None:
        h = engine()
        h.send(OFFER)
        rejected = w.Macros(
            b"R", ((b"{rcpt_mailer}", b"error"), (b"{rcpt_host}", b"5.1.1"),
                   (b"{rcpt_addr}", b"<bob@local.test>: Recipient address rejected"))
        )  # fmt: skip
        replies = h.send(
            *session(), rejected, w.Rcpt((b"<bob@local.test>",)), w.Bare(b"A"), w.Bare(b"Q"),
            eof=True,
        )  # fmt: skip
        assert replies == []  # every step was "no reply"
        stages = [e["stage"] for e in h.all("stage")]
        assert stages == ["connect", "helo", "mail", "rcpt", "abort"]
        (mta,) = h.all("reply")
        assert (mta["recipient"], mta["by"]) == ("bob@local.test", "mta")
        (summary,) = h.all("session")
        assert summary["commands"]["close"] == 1
        assert h.transport.closed

    run(test)


def test_session_mode_records_every_queued_step(engine: Callable[..., Harness]) -> None:
    """``[milter] events = "session"``: no stage events, one session event with both
    transactions (the client quits in the second: the engine aborts it), all steps "no reply"."""

    def test() -> None:
        h = engine(event_mode="session")
        h.send(OFFER)
        rejected = w.Macros(
            b"R", ((b"{rcpt_mailer}", b"error"), (b"{rcpt_host}", b"5.1.1"),
                   (b"{rcpt_addr}", b"<bob@local.test>: Recipient address rejected"))
        )  # fmt: skip
        queue_id = w.Macros(b"E", ((b"i", b"7A17F20D4BB"),))
        replies = h.send(
            *session(), rejected, w.Rcpt((b"<bob@local.test>",)), w.Bare(b"T"), queue_id,
            w.EndOfMessage(b""), w.Mail((b"<second@example.org>",)),
            w.Rcpt((b"<carol@local.test>",)), w.Bare(b"Q"), eof=True,
        )  # fmt: skip
        assert [f.command for f in replies] == [b"c"]  # end of message is always answered
        assert h.all("stage") == [] and h.all("reply") == []
        (summary,) = h.all("session")
        assert summary["counts"] == "connect=1 helo=1 mail=2 rcpt=2/3 data=1 eom=1 abort=1"
        first, second = summary["transactions"]
        assert (first["sender"], first["queue_id"], first["end"]) == (
            "s-0@example.org",
            "7A17F20D4BB",
            "eom",
        )
        assert [(r["recipient"], r["outcome"], r.get("by")) for r in first["recipients"]] == [
            ("alice@local.test", "accepted", None),
            ("bob@local.test", "rejected", "mta"),
        ]
        assert (second["sender"], second["end"]) == ("second@example.org", "abort")
        assert [r["recipient"] for r in second["recipients"]] == ["carol@local.test"]

    run(test)


def test_answers_without_no_reply_and_a_multi_line_reject(engine: Callable[..., Harness]) -> None:
    rules = [
        PolicyRule(
            "block", Stage.RCPT, RuleAction.REJECT,
            recipient=(compile_pattern("mallory@local.test"),),
            code=550, enhanced=EnhancedCode(5, 7, 1), reason=Reason.POLICY_VIOLATION,
            text="Not here.\nAsk 100% of us.",
        )
    ]  # fmt: skip

    def test() -> None:
        h = engine(policy_from_rules(rules), noreply=False)
        h.send(OFFER)
        replies = h.send(*session(), w.Rcpt((b"<mallory@local.test>",)))
        assert [f.command for f in replies] == [b"c"] * 4 + [b"y"], h.all()
        text = replies[-1].data.rstrip(b"\0").decode()
        lines = text.split("\r\n")
        assert "Ask 100%% of us." in lines[1]
        assert lines[0].startswith("550-5.7.1 ") and lines[-1].startswith("550 5.7.1 ")
        replies = h.send(w.Bare(b"T"), w.EndOfMessage())
        assert [f.command for f in replies] == [b"c", b"c"]

    run(test)


def test_quarantine_is_sent_before_the_end_of_message_answer(
    engine: Callable[..., Harness],
) -> None:
    rules = [PolicyRule("hold", Stage.MAIL, RuleAction.QUARANTINE, reason=Reason.SPAM_DETECTED)]

    def test() -> None:
        h = engine(policy_from_rules(rules))
        h.send(OFFER)
        h.send(*session())
        replies = h.send(w.Bare(b"T"), w.EndOfMessage())
        assert replies == [w.Frame(b"q", b"smtp-policy rule hold\0"), w.Frame(b"c")]

    run(test)


def test_malformed_bytes_close_the_connection_with_one_line(
    engine: Callable[..., Harness],
) -> None:
    def test() -> None:
        h = engine()
        h.send(OFFER)
        h.send(POSTFIX, w.Connect(b"c", b"4", 1, b"192.0.2.1"))
        h.transport.written.clear()
        h.connection.data_received(b"\x00\x00\x00\x02Zx")
        assert h.transport.closed
        assert len(h.problems) == 1 and "unknown milter command" in h.problems[0]  # type: ignore[attr-defined]
        h.connection.connection_lost(None)
        assert len(h.all("session")) == 1  # the session still ends with its summary

    run(test)


def test_commands_before_negotiation_are_a_protocol_error(
    engine: Callable[..., Harness],
) -> None:
    def test() -> None:
        h = engine()
        h.send(w.Helo(b"x"))
        assert h.transport.closed and h.problems  # type: ignore[attr-defined]

    run(test)


def test_a_raising_callback_fails_open(
    engine: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(Milter.Base):  # type: ignore[misc]
        def envfrom(self, sender: str, *args: str) -> int:
            raise RuntimeError("boom")

    def test() -> None:
        h = engine()
        monkeypatch.setattr(Milter, "factory", Broken)
        h.send(OFFER)
        replies = h.send(w.Connect(b"c", b"4", 1, b"192.0.2.1"), w.Mail((b"<a@b>",)))
        assert [f.command for f in replies] == [b"c", b"c"]
        ((exc, milter),) = h.errors  # type: ignore[attr-defined]
        assert isinstance(exc, RuntimeError) and isinstance(milter, Broken)

    run(test)


def test_quit_with_a_new_connection_starts_a_second_session(
    engine: Callable[..., Harness],
) -> None:
    def test() -> None:
        h = engine()
        h.send(OFFER)
        h.send(*session(1), w.Bare(b"A"), w.Bare(b"K"))
        h.send(*session(2), w.Bare(b"A"), w.Bare(b"Q"), eof=True)
        summaries = h.all("session")
        assert len(summaries) == 2
        assert summaries[0]["session"] != summaries[1]["session"]
        helos = [e["helo"] for e in h.all("stage") if e["stage"] == "helo"]
        assert helos == ["helo-1.test", "helo-2.test"]
        assert not h.all("error")

    run(test)


def test_the_context_finds_macros_as_libmilter_does() -> None:
    ctx = MilterContext(lambda data: None)
    ctx.set_macros(w.M_CONNECT, {"j": "mx", "{daemon_name}": "d"})
    ctx.set_macros(w.M_ENVRCPT, {"{i}": "QID"})
    assert ctx.getsymval("{j}") == "mx"
    assert ctx.getsymval("i") == "QID"
    assert ctx.getsymval("daemon_name") is None
    ctx.clear_transaction()
    assert ctx.getsymval("i") is None
    with pytest.raises(RuntimeError):
        ctx.quarantine("not at end of message")
    with pytest.raises(w.MilterReplyError, match="not 4xx or 5xx"):
        ctx.setreply("250", None, "not an error")


def test_negotiating_again_ends_the_open_session(engine: Callable[..., Harness]) -> None:
    def test() -> None:
        h = engine()
        h.send(OFFER)
        h.send(*session(1))
        (answer,) = h.send(OFFER)
        assert answer.command == b"O"
        h.send(*session(2), w.Bare(b"Q"), eof=True)
        assert len(h.all("session")) == 2
        assert Milter.factory.active == 0

    run(test)


def test_an_unexpected_error_drops_only_that_connection(
    engine: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    def test() -> None:
        h = engine()
        h.send(OFFER)
        monkeypatch.setitem(engine_module._DISPATCH, w.Helo, lambda self, command: 1 / 0)
        h.send(POSTFIX, w.Connect(b"c", b"4", 1, b"192.0.2.1"), w.Helo(b"x"))
        assert h.transport.closed
        ((exc, _milter),) = h.errors  # type: ignore[attr-defined]
        assert isinstance(exc, ZeroDivisionError)

    run(test)


class _Journal(io.StringIO):
    """An events stream that notes each write in a journal shared with the transport."""

    def __init__(self, journal: list[tuple[str, int]]) -> None:
        super().__init__()
        self.journal = journal

    def write(self, text: str) -> int:
        self.journal.append(("events", text.count("\n")))
        return super().write(text)


def test_a_batch_of_commands_writes_its_events_at_once_before_the_replies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal: list[tuple[str, int]] = []
    writer = EventWriter(_Journal(journal))
    settings = MilterSettings(writer, default_knowledge(), MilterPolicy(), None, True, "stages")
    monkeypatch.setattr(Milter, "factory", MilterFactory(settings))
    server = MilterServer(
        timeout=60,
        on_error=lambda exc, m: None,
        on_protocol_error=print,
        hold_events=writer.hold,
        release_events=writer.release,
    )

    class Transport(FakeTransport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            journal.append(("reply", 1))
            super().write(data)

    def test() -> None:
        connection = MilterConnection(server)
        connection.connection_made(Transport())
        connection.data_received(OFFER.encode())
        journal.clear()
        commands = [*session(), w.Bare(w.DATA), w.EndOfMessage(b"")]
        connection.data_received(b"".join(c.encode() for c in commands))
        assert [kind for kind, _ in journal] == ["events", "reply"]  # one write, then replies
        assert journal[0][1] >= 5  # connect, helo, mail, rcpt, data, end of message
        journal.clear()
        writer.emit_fields({"schema": 1, "source": "milter", "ts": "x", "event": "error"})
        assert journal == [("events", 1)]  # outside a batch: written at once

    run(test)
