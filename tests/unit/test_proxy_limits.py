"""The proxy against hostile clients (scripted upstream, no Postfix): error limits, refusal
runs recorded once, clients that never read, idle clients that never reach Postfix."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

from tests.proxy_harness import Client, Harness, harness, run


def test_errors_slow_down_then_421_and_close() -> None:
    """Past the soft limit each refusal waits; past the hard limit: 421 4.7.0 and close."""

    async def scenario() -> None:
        async with harness(soft_error_limit=2, hard_error_limit=5, error_sleep=0.1) as h:
            client = await h.client()
            started = time.monotonic()
            client.writer.write(b"XCLIENT ADDR=192.0.2.1\r\n" * 50)
            codes = [(await client.reply()).code for _ in range(6)]
            elapsed = time.monotonic() - started
            assert codes == [502] * 5 + [421]
            assert await client.closed()
            assert elapsed >= 3 * 0.1  # errors 3, 4 and 5 waited
            assert h.upstream.received == []  # a refused command opens no inner connection

    run(scenario())


def test_a_run_of_refusals_is_one_event_with_a_count() -> None:
    """Five identical 502s: the first is recorded, then one event says four more were sent."""

    async def scenario() -> None:
        async with harness(hard_error_limit=100) as h:
            client = await h.client()
            client.writer.write(b"XCLIENT ADDR=192.0.2.1\r\n" * 5 + b"EHLO client.test\r\n")
            codes = [(await client.reply()).code for _ in range(6)]
            assert codes == [502] * 5 + [250]
            await client.command(b"QUIT")
            refusals = [e for e in h.events() if e["command"] == "XCLIENT"]
            assert len(refusals) == 2
            assert "repeated" not in refusals[0]
            assert refusals[1]["repeated"] == 4
            assert refusals[1]["code"] == 502

    run(scenario())


def test_a_client_that_never_reads_is_dropped() -> None:
    """Replies left unread past max_unread (or for idle_timeout): the client is cut."""

    async def scenario() -> None:
        limits: dict[str, Any] = {"soft_error_limit": 10**9, "hard_error_limit": 10**9}
        options: dict[str, Any] = {**limits, "max_unread": 4096, "idle_timeout": 1.0}
        async with harness(**options) as h:
            client = await _tiny_window_client(h.port)
            h.clients.append(client)
            assert (await client.reply()).code == 220
            writing = asyncio.create_task(_flood(client.writer, b"XCLIENT ADDR=192.0.2.1\r\n"))
            (error,) = await _wait_for_events(h, "error")
            assert "does not read" in error["text"]
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
            assert len(h.events()) <= 3  # greeting, first refusal, the run's count

    run(scenario())


async def _tiny_window_client(port: int) -> Client:
    """A client whose socket takes in little, so unread replies pile up at the proxy."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return Client(*await asyncio.open_connection(sock=sock))


async def _flood(writer: asyncio.StreamWriter, line: bytes) -> None:
    with contextlib.suppress(ConnectionError):
        for _ in range(2000):
            writer.write(line * 1000)
            await writer.drain()


async def _wait_for_events(h: Harness, kind: str) -> list[dict[str, Any]]:
    for _ in range(200):
        if found := h.events(kind):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} event")


def test_silent_client_times_out_before_any_inner_connection() -> None:
    """Before its first command a client has greet_timeout, and takes no inner smtpd."""

    async def scenario() -> None:
        async with harness(greet_timeout=0.2) as h:
            client = await h.client()
            reply = await client.reply()
            assert reply.code == 421
            assert reply.lines[0].startswith("4.4.2 ")
            assert await client.closed()
            assert h.upstream.received == []

    run(scenario())


def test_per_address_cap() -> None:
    """Beyond max_per_address sessions from one address: 421 4.7.0, nothing reaches Postfix."""

    async def scenario() -> None:
        async with harness(max_per_address=2) as h:
            await h.client()
            await h.client()
            third = await h.connect()
            reply = await third.reply()
            assert reply.code == 421
            assert reply.lines == ("4.7.0 Error: too many connections from your address",)
            assert await third.closed()
            assert h.upstream.received == []

    run(scenario())


def test_quit_and_garbage_before_a_valid_command_stay_local() -> None:
    """Unknown commands get 502 5.5.2 and QUIT 221 from the proxy; Postfix is never asked."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            reply = await client.command(b"GET / HTTP/1.0")
            assert (reply.code, reply.lines[0]) == (502, "5.5.2 Error: command not recognized")
            assert (await client.command(b"QUIT")).code == 221
            assert await client.closed()
            assert h.upstream.received == []

    run(scenario())


def test_first_valid_command_opens_the_inner_session() -> None:
    """EHLO opens the inner connection: XCLIENT first, then the client's EHLO."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            assert h.upstream.received == []
            assert (await client.command(b"EHLO client.test")).code == 250
            await client.command(b"QUIT")
            assert [line.split()[0] for line in h.upstream.lines] == [b"XCLIENT", b"EHLO", b"QUIT"]

    run(scenario())


def test_a_flood_at_the_connection_caps_writes_bounded_events() -> None:
    """200 connections past each cap (global, per address) each get 421 4.7.0, and the
    events are bounded: at most one refusal recorded a second, the ones between counted into
    one event with ``repeated`` (written a second later once the flood stops)."""

    async def flood(h: Harness, text: str) -> None:
        started = time.monotonic()
        for _ in range(200):
            refused = await h.connect()
            reply = await refused.reply()
            assert (reply.code, reply.lines) == (421, (text,))
            assert await refused.closed()
        seconds = time.monotonic() - started
        await asyncio.sleep(1.2)  # the held-back count is written a second later
        refusals = [e for e in h.events() if e.get("code") == 421]
        assert len(refusals) <= 2 * (int(seconds) + 2)
        assert (
            sum(1 for e in refusals if "repeated" not in e)
            + sum(e.get("repeated", 0) for e in refusals)
            == 200
        )

    async def scenario() -> None:
        async with harness(max_connections=1) as h:
            await h.client()
            await flood(h, "4.7.0 Too many connections, please try again later")
        async with harness(max_per_address=1) as h:
            await h.client()
            await flood(h, "4.7.0 Error: too many connections from your address")

    run(scenario())


def test_refusals_from_many_addresses_keep_a_bounded_table() -> None:
    """A flood from many client addresses cannot grow the table of tallied refusals: past
    MAX_CAP_TALLIES the quietest tallies go (their held counts written first)."""
    from smtp_policy.adapters.proxy import MAX_CAP_TALLIES

    async def scenario() -> None:
        async with harness() as h:
            for i in range(3 * MAX_CAP_TALLIES):
                h.service._cap_tally(f"address 10.{i // 65536}.{i // 256 % 256}.{i % 256}")
                assert len(h.service._at_cap) <= MAX_CAP_TALLIES

    run(scenario())


def test_a_silent_upstream_gives_421_only_while_a_reply_is_owed() -> None:
    """Postfix silent for reply_timeout while a reply is owed: 421 4.3.0 and an error event;
    silence between commands (nothing owed) is no fault."""

    async def scenario() -> None:
        async with harness(reply_timeout=0.3) as h:
            client = await h.client()
            assert (await client.command(b"EHLO client.test")).code == 250
            await asyncio.sleep(0.8)  # nothing owed: the proxy keeps Postfix
            assert (await client.command(b"NOOP")).code == 250
            lost = await client.command(b"SLOW")  # Postfix answers only after a second
            assert (lost.code, lost.lines[0][:5]) == (421, "4.3.0")
            assert await client.closed()
            (error,) = h.events("error")
            assert error.get("text") == "upstream lost: no reply in 0.3 s"

    run(scenario())
