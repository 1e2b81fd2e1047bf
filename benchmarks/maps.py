"""Socketmap throughput and latency: `smtp-policy maps` under 32 concurrent Postfix-like clients.

Starts the real maps server, and beside it a floor server (the same asyncio netstring loop
answering NOTFOUND without looking at the key), then drives each with N concurrent clients that
send footer or dsn lookups one after another on a reused connection, as Postfix daemons do.
Prints lookups/s and p50/p99 latency per map, and the ratio to the floor. No asserts.

    .venv/bin/python benchmarks/maps.py [--clients 32] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smtp_policy.wire.netstring import NetstringDecoder, encode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the tests' daemon wrapper importable
    sys.path.insert(0, str(ROOT))
from smtp_policy.lab.instance import poll  # noqa: E402
from tests.helpers import Daemon, running  # noqa: E402

KEYS = {
    "footer": [
        "550 5.1.1 <nobody@example.com>: Recipient address rejected: "
        "User unknown in local recipient table",
        "554 5.7.1 <x@example.org>: Relay access denied",
        "450 4.7.1 <c.example>: Helo command rejected: Host not found",
    ],
    "dsn": [
        "5.1.1 host mx.example.com[192.0.2.1] said: 550-5.1.1 The email account that you tried to "
        "reach does not exist. 550 5.1.1 https://support.google.com/mail/?p=NoSuchUser - gsmtp "
        "(in reply to RCPT TO command)",
        "4.2.2 host mx.example.com[192.0.2.1] said: 452 4.2.2 Mailbox full "
        "(in reply to RCPT TO command)",
        "5.7.1 host mx.example.net[192.0.2.9] said: 554 5.7.1 Service unavailable; Client host "
        "[198.51.100.7] blocked using zen.spamhaus.org (in reply to RCPT TO command)",
    ],
}
FLOOR = r"""
import asyncio, sys
from smtp_policy.wire.netstring import NetstringDecoder, encode
async def handle(reader, writer):
    d = NetstringDecoder()
    while data := await reader.read(65536):
        d.feed(data)
        while d.next() is not None:
            writer.write(encode(b"NOTFOUND "))
        await writer.drain()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


async def client(port: int, keys: list[str], deadline: float, latencies: list[float]) -> None:
    """One Postfix-like client: one lookup at a time on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = NetstringDecoder()
    i = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        writer.write(encode(keys[i % len(keys)].encode()))
        i += 1
        while decoder.next() is None:
            decoder.feed(await reader.read(65536))
        latencies.append(time.perf_counter() - started)
    writer.close()


async def drive(port: int, name: str, clients: int, seconds: float) -> tuple[float, float, float]:
    """Lookups/s, p50 and p99 latency (ms) for map ``name``."""
    keys = [f"{name} {k}" for k in KEYS[name]]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(client(port, keys, deadline, latencies) for _ in range(clients)))
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    return len(latencies) / seconds, p50, p99


def start_floor(port: int, timeout: float = 10) -> subprocess.Popen[bytes]:
    """The floor server, once it accepts connections on ``port``."""
    proc = subprocess.Popen([sys.executable, "-c", FLOOR, str(port)], stderr=subprocess.DEVNULL,
                            cwd=ROOT)  # fmt: skip

    def accepts() -> bool | None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return None
        return True

    try:
        poll(accepts, timeout, lambda: f"the floor server on port {port}",
             unless=lambda: proc.poll() is not None)  # fmt: skip
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def main() -> None:
    """Run both servers, drive them, print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = Daemon("maps", Path(tmp), "--config", "/dev/null", port=18896,
                      events=Path(tmp) / "ev.jsonl", cwd=ROOT)  # fmt: skip
        floor_port = 18897
        floor = start_floor(floor_port)
        try:
            with running(ours):
                print(f"{args.clients} concurrent clients, {args.seconds:.0f} s per run")
                floor_rate, fp50, fp99 = asyncio.run(
                    drive(floor_port, "footer", args.clients, args.seconds)
                )
                print(
                    f"floor (NOTFOUND, no work): {floor_rate:,.0f} lookups/s, "
                    f"p50 {fp50:.2f} ms, p99 {fp99:.2f} ms"
                )
                for name in ("footer", "dsn"):
                    rate, p50, p99 = asyncio.run(
                        drive(ours.tcp_port, name, args.clients, args.seconds)
                    )
                    print(
                        f"smtp-policy maps {name:<6}: {rate:,.0f} lookups/s, p50 {p50:.2f} ms, "
                        f"p99 {p99:.2f} ms, {rate / floor_rate:.2f} of the floor"
                    )
        finally:
            floor.terminate()
            floor.wait(timeout=10)


if __name__ == "__main__":
    main()
