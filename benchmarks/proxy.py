"""The SMTP front proxy's cost: Postfix's smtp-source through the proxy vs straight to Postfix.

Starts one private Postfix in discard mode (nothing is delivered; the queue is the cost) with
an inner listener that trusts the proxy for XCLIENT, and one ``smtp-policy proxy`` process in
front of it (events written to a temp file, as in production). Then, alternating direct and
proxied runs in the same process so that both see the same machine state:

* throughput: ``smtp-source -s SESSIONS -m MESSAGES`` wall time -> messages per second, with
  one connection per message (the proxy's per-session cost: two connections, XCLIENT) and
  with ``-d`` (messages share connections: the relaying cost alone);
* latency: one client, one transaction at a time (MAIL, RCPT, DATA, message, "."), the time
  from MAIL to the 250 after the dot, per message -> median and 95th percentile.

Prints each round and the proxied/direct ratios. Nothing is asserted: the machine is shared.

    .venv/bin/python benchmarks/proxy.py [--messages 2000] [--sessions 10] [--rounds 3]
    .venv/bin/python benchmarks/proxy.py --quick --profile /tmp/proxy.prof   # then pstats

``--reply-events failures`` runs the proxy in that mode (reply events for 4xx/5xx only, one
``session`` event per connection); ``--inner-socket unix`` puts Postfix's inner listener on a
unix socket, as ``smtp-policy proxy --print-postfix-config`` wires it. ``--quick`` is one short
round for iterating; ``--profile FILE`` runs the proxy under cProfile with a CPU-time clock
(written when the proxy stops) for ``python -m pstats FILE``. Each round also prints the proxy
process's own CPU time per message (user + system, from /proc): the number that a busy, shared
machine disturbs least.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from smtp_policy.wire.smtp import ReplyReader, ServerReply

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the tests' Postfix library importable
    sys.path.insert(0, str(ROOT))
from smtp_policy.lab.instance import free_port  # noqa: E402
from smtp_policy.lab.postfix import PrivatePostfix  # noqa: E402
from tests.helpers import Daemon, running  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
#: ``python -c PROFILED FILE -m smtp_policy ...``: the proxy under cProfile, CPU time as its clock.
PROFILED = """\
import cProfile, runpy, sys, time
out, _, module = sys.argv.pop(1), sys.argv.pop(1), sys.argv.pop(1)
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(runpy.run_module, module, run_name="__main__", alter_sys=True)
finally:
    profile.dump_stats(out)
"""
#: The inner listener's master.cf name when it is a unix socket (``--inner-socket unix``).
INNER_SERVICE = "smtp-policy-proxy"
MESSAGE = b"Subject: benchmark\r\n\r\n" + b"x" * 70 + b"\r\n" + b"y" * 900 + b"\r\n.\r\n"


@contextmanager
def postfix_and_proxy(
    profile: Path | None = None,
    event_loop: str = "auto",
    reply_events: str = "each",
    inner_socket: str = "tcp",
) -> Iterator[tuple[int, int, int]]:
    """A discarding Postfix and a proxy in front of it: (direct port, proxy port, proxy pid).

    ``inner_socket``: ``tcp`` (a loopback port) or ``unix`` (a socket in Postfix's public/, as
    ``smtp-policy proxy --print-postfix-config`` wires it)."""
    inner = free_port()
    listener = INNER_SERVICE if inner_socket == "unix" else f"127.0.0.1:{inner}"
    master = [
        f"{listener} {inner_socket.replace('tcp', 'inet')} n - n - - smtpd",
        "  -o smtpd_authorized_xclient_hosts=127.0.0.1",
    ]
    with PrivatePostfix(discard=True, master_cf=master) as pf, tempfile.TemporaryDirectory() as tmp:
        upstream = f"127.0.0.1:{inner}"
        if inner_socket == "unix":
            upstream = f"unix:{pf.queue_dir / 'public' / INNER_SERVICE}"
        proxy = Daemon(
            "proxy", Path(tmp), "--upstream", upstream,
            "--max-connections", "1000", "--max-per-address", "1000", "--no-reverse-dns",
            *(["--event-loop", event_loop] if event_loop != "auto" else []),
            *(["--reply-events", reply_events] if reply_events != "each" else []),
            port=free_port(), events=Path(tmp) / "events",
        )  # fmt: skip
        if profile is not None:
            proxy.argv[1:1] = ["-c", PROFILED, str(profile)]  # then -m smtp_policy proxy ...
        with running(proxy):  # ready once it wrote its started event (it listens by then)
            yield pf.smtp_port, proxy.tcp_port, proxy.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(port: int, messages: int, sessions: int, *, reuse: bool = False) -> float:
    """Messages per second smtp-source reaches against ``port`` (``reuse``: -d, many
    messages per connection; otherwise one connection per message)."""
    argv = [SMTP_SOURCE, *(["-d"] if reuse else []), "-s", str(sessions), "-m", str(messages)]
    argv += ["-l", "1024"]
    argv += ["-f", "sender@local.test", "-t", "alice@local.test", "-M", "bench.client.test"]
    started = time.perf_counter()
    subprocess.run([*argv, f"127.0.0.1:{port}"], check=True, capture_output=True)
    return messages / (time.perf_counter() - started)


def latencies(port: int, count: int) -> list[float]:
    """Seconds from MAIL to the 250 after the dot, one transaction at a time."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    reader = ReplyReader()

    def reply() -> ServerReply:
        while (got := reader.next_reply()) is None:
            reader.feed(sock.recv(65536))
        return got

    reply()
    sock.sendall(b"EHLO bench.client.test\r\n")
    reply()
    out = []
    for _ in range(count):
        started = time.perf_counter()
        sock.sendall(b"MAIL FROM:<sender@local.test>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n")
        codes = [reply().code for _ in range(3)]
        sock.sendall(MESSAGE)
        codes.append(reply().code)
        out.append(time.perf_counter() - started)
        if codes != [250, 250, 354, 250]:
            raise SystemExit(f"unexpected replies {codes}")
    sock.sendall(b"QUIT\r\n")
    reply()
    sock.close()
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-th quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    """Run the rounds and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--latency-count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round of 500 messages")
    parser.add_argument("--profile", type=Path, metavar="FILE", help="cProfile the proxy")
    parser.add_argument("--event-loop", default="auto", help="the proxy's --event-loop")
    parser.add_argument("--reply-events", default="each", help="the proxy's --reply-events")
    parser.add_argument(
        "--inner-socket",
        choices=("tcp", "unix"),
        default="tcp",
        help="Postfix's inner listener: a loopback port, or a unix socket as shipped",
    )
    args = parser.parse_args()
    if args.quick:
        args.messages, args.latency_count, args.rounds = 500, 200, 1
    rates: dict[str, list[float]] = {"direct": [], "proxy": []}
    reused: dict[str, list[float]] = {"direct": [], "proxy": []}
    lat: dict[str, list[float]] = {"direct": [], "proxy": []}
    cpu: dict[str, list[float]] = {"new": [], "reused": []}
    with postfix_and_proxy(args.profile, args.event_loop, args.reply_events, args.inner_socket) as (
        direct,
        proxied,
        pid,
    ):
        ports = {"direct": direct, "proxy": proxied}
        latencies(direct, 20)  # warm up both paths (smtpd processes, caches)
        latencies(proxied, 20)
        for n in range(1, args.rounds + 1):
            for name, port in ports.items():
                used = cpu_seconds(pid)
                rate = throughput(port, args.messages, args.sessions)
                between = cpu_seconds(pid)
                rate_reused = throughput(port, args.messages, args.sessions, reuse=True)
                after = cpu_seconds(pid)
                got = latencies(port, args.latency_count)
                rates[name].append(rate)
                reused[name].append(rate_reused)
                lat[name] += got
                median, p95 = statistics.median(got) * 1e3, percentile(got, 0.95) * 1e3
                line = (
                    f"round {n} {name:6}: {rate:6.0f} msg/s (1 per connection) "
                    f"{rate_reused:6.0f} msg/s (-d)   "
                    f"latency median {median:5.2f} ms  p95 {p95:5.2f} ms"
                )
                if name == "proxy":
                    cpu["new"].append((between - used) / args.messages)
                    cpu["reused"].append((after - between) / args.messages)
                    line += f"   proxy CPU {cpu['new'][-1] * 1e3:.2f}/{cpu['reused'][-1] * 1e3:.2f}"
                    line += " ms/msg"
                print(line, flush=True)
    _summary(rates, reused, lat, cpu)


def _summary(
    rates: dict[str, list[float]],
    reused: dict[str, list[float]],
    lat: dict[str, list[float]],
    cpu: dict[str, list[float]],
) -> None:
    d_lat, p_lat = lat["direct"], lat["proxy"]
    rows = [
        ("msg/s, new conn.", statistics.median(rates["direct"]), statistics.median(rates["proxy"])),
        ("msg/s, reused", statistics.median(reused["direct"]), statistics.median(reused["proxy"])),
        ("latency p50 ms", statistics.median(d_lat) * 1e3, statistics.median(p_lat) * 1e3),
        ("latency p95 ms", percentile(d_lat, 0.95) * 1e3, percentile(p_lat, 0.95) * 1e3),
    ]
    print()
    for label, direct, proxied in rows:
        print(
            f"{label:17} direct {direct:9.2f}   proxy {proxied:9.2f}   ratio {proxied / direct:.2f}"
        )
    added = (statistics.median(p_lat) - statistics.median(d_lat)) * 1e3
    print(f"added latency per transaction, median: {added:.2f} ms (target < 1 ms)")
    print(
        f"proxy CPU per message: {statistics.median(cpu['new']) * 1e3:.2f} ms (new conn.), "
        f"{statistics.median(cpu['reused']) * 1e3:.2f} ms (reused)"
    )


if __name__ == "__main__":
    main()
