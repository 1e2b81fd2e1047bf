"""What the milter's ``[milter] events`` modes cost, in process: the asyncio engine's
connection fed the frames Postfix sends for one message per session (connect, EHLO, MAIL, two
RCPTs, one of them rejected by Postfix, DATA, end of message, QUIT), every step "no reply" as
over the unix socket, events appended to a file through the real EventWriter, held per batch
of commands as the milter command holds them (``stages, unheld``: one write per event, as
before).

No MTA, no socket, no other process: the milter's own CPU per session (user and system, so the
writes count), which the end-to-end ``milter_overhead.py`` measures with Postfix's noise around
it. The modes run in turn, round after round; each prints its median microseconds per session
and its ratio to ``stages`` (the default) measured in the same run. Nothing is asserted.

    .venv/bin/python benchmarks/milter_events.py                 # 5 rounds of 3000 sessions
    .venv/bin/python benchmarks/milter_events.py --rounds 2 --sessions 500 --events /dev/null
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import Milter  # noqa: E402

from smtp_policy.adapters._milter_engine import MilterConnection, MilterServer  # noqa: E402
from smtp_policy.adapters.milter import MilterFactory, MilterSettings  # noqa: E402
from smtp_policy.data import default_knowledge  # noqa: E402
from smtp_policy.emit import EventWriter  # noqa: E402
from smtp_policy.wire import milter as w  # noqa: E402

MODES = ("stages", "session", "both")
UNHELD = "stages, unheld"


class _Sink(asyncio.Transport):
    """A transport that drops what the engine writes."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _session_bytes(n: int) -> bytes:
    rejected = w.Macros(
        b"R",
        (
            (b"{rcpt_mailer}", b"error"),
            (b"{rcpt_host}", b"5.1.1"),
            (b"{rcpt_addr}", b"Recipient address rejected: User unknown in virtual mailbox table"),
        ),
    )
    commands: list[w.Command] = [
        w.OptionNegotiation(6, w.ALL_ACTIONS, w.ALL_PROTOCOL),
        w.Macros(b"C", ((b"j", b"mx.test"), (b"v", b"Postfix 3.7.11"))),
        w.Connect(b"client.example", b"4", 40000 + n % 20000, b"192.0.2.7"),
        w.Helo(b"client.test"),
        w.Mail((f"<s-{n}@example.org>".encode(), b"SIZE=2000")),
        w.Rcpt((b"<alice@local.test>",)),
        w.Macros(b"R", ((b"i", b"7A17F20D4BB"),)),
        rejected,
        w.Rcpt((f"<nobody-{n}@local.test>".encode(),)),
        w.Macros(b"T", ((b"i", b"7A17F20D4BB"),)),
        w.Bare(b"T"),
        w.Macros(b"E", ((b"i", b"7A17F20D4BB"),)),
        w.EndOfMessage(b""),
        w.Bare(b"Q"),
    ]
    return b"".join(c.encode() for c in commands)


def _run_mode(mode: str, sessions: list[bytes], path: str) -> float:
    """Microseconds of CPU per session for ``mode``, its events appended to ``path`` (emptied
    first)."""
    if path != os.devnull:
        Path(path).unlink(missing_ok=True)
    events = EventWriter.open(path)
    held = mode != UNHELD
    settings = MilterSettings(events, default_knowledge(), event_mode=mode if held else "stages")
    Milter.factory = MilterFactory(settings)
    server = MilterServer(timeout=600, on_error=lambda exc, m: None, on_protocol_error=print)
    if held:  # as the milter command wires it
        server.hold_events, server.release_events = events.hold, events.release

    async def drive() -> float:
        start = time.process_time()
        for data in sessions:
            connection = MilterConnection(server)
            connection.connection_made(_Sink())
            connection.data_received(data)
            connection.eof_received()
            connection.connection_lost(None)
        return time.process_time() - start

    try:
        return asyncio.run(drive()) * 1e6 / len(sessions)
    finally:
        events.close()


def main() -> None:
    """Parse the options, run the rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=3000, help="sessions per mode and round")
    parser.add_argument("--events", help="the events file (default: one in a temp dir)")
    args = parser.parse_args()
    sessions = [_session_bytes(n) for n in range(args.sessions)]
    modes = (*MODES, UNHELD)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.events or str(Path(tmp) / "events.jsonl")
        _run_mode("stages", sessions[:200], path)  # warm up: imports, caches
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for round_ in range(1, args.rounds + 1):
            for mode in modes:
                times[mode].append(_run_mode(mode, sessions, path))
            line = "  ".join(f"{mode} {times[mode][-1]:7.1f}" for mode in modes)
            print(f"round {round_}  µs/session: {line}", flush=True)
    base = statistics.median(times["stages"])
    print(f"\n{'events mode':<15} {'µs/session':>11} {'÷ stages':>9}  runs (µs/session)")
    for mode in modes:
        median = statistics.median(times[mode])
        runs = " ".join(f"{t:.0f}" for t in times[mode])
        print(f"{mode:<15} {median:11.1f} {median / base:9.2f}  {runs}")


if __name__ == "__main__":
    main()
