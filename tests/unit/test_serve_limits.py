"""Issue 16, item 8: the maps and policy servers' limits, in process (asyncio on loopback)."""

from __future__ import annotations

import asyncio

import pytest

from smtp_policy.adapters._serve import Connections, EventBudget, serve_requests
from smtp_policy.wire.netstring import NetstringDecoder, encode


def test_event_budget_counts_what_it_holds_back() -> None:
    now = [10.0]
    budget = EventBudget(3, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    now[0] = 11.2
    assert budget.take() == (True, 2)  # the previous second's two, reported once
    assert budget.take() == (True, 0)


async def _idle_then_busy(limit: int) -> tuple[int, int, bytes]:
    connections = Connections(limit)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_requests(
            reader,
            writer,
            NetstringDecoder(),
            lambda payload: encode(b"OK " + payload),
            idle_timeout=30,
            on_error=lambda message: None,
            max_requests=3,
        )

    server = await asyncio.start_server(connections.wrap(echo), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(limit + 20)]
    await asyncio.sleep(0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(encode(b"key%d" % i) for i in range(5)))
    await writer.drain()
    answers = await asyncio.wait_for(reader.read(), 10)  # the server closes after 3
    open_now, closed = len(connections), connections.closed_idle
    writer.close()
    for _, w in idle:
        w.close()
    server.close()
    await server.wait_closed()
    return open_now, closed, answers


def test_past_the_cap_the_idlest_goes_and_requests_per_connection_are_capped() -> None:
    open_now, closed, answers = asyncio.run(_idle_then_busy(8))
    assert open_now <= 8
    assert closed >= 21
    assert answers == b"".join(encode(b"OK key%d" % i) for i in range(3))


def test_the_event_rate_is_configured_per_server_and_checked() -> None:
    """[maps]/[policy] events_per_second: a whole number of at least 1 (default 1000)."""
    from smtp_policy.config import Config
    from smtp_policy.config.check import check_sources
    from smtp_policy.config.load import default_source
    from smtp_policy.config.model import ConfigSource

    def check(text: str) -> tuple[Config | None, list[str]]:
        report = check_sources([default_source(), ConfigSource("t.toml", text)])
        return report.config, [str(p) for p in report.problems]

    config, problems = check("[maps]\nevents_per_second = 100\n")
    assert problems == [] and config is not None
    assert (config.maps.events_per_second, config.policy.events_per_second) == (100, 1000)
    _, problems = check("[policy]\nevents_per_second = 0\n")
    assert any("policy.events_per_second" in p and "at least 1" in p for p in problems)


def test_asyncio_errors_are_one_line_and_an_event(capsys: pytest.CaptureFixture[str]) -> None:
    """accept() out of descriptors (asyncio then pauses accepting): one stderr line and one
    error event, not asyncio's traceback."""
    import io
    import json

    from smtp_policy.commands._serve import _one_line_errors
    from smtp_policy.core.events import Source
    from smtp_policy.emit import EventWriter

    out = io.StringIO()
    handle = _one_line_errors(Source.MAPS, EventWriter(out))
    context = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(24, "Too many open files"),
    }
    loop = asyncio.new_event_loop()
    try:
        handle(loop, context)
    finally:
        loop.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "Too many open files" in err
    (event,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert event["event"] == "error" and "Too many open files" in event["text"]
