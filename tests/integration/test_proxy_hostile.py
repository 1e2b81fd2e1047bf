"""The proxy against hostile clients, in front of a real private Postfix (issue 16, items 1,
4 and 5): an XCLIENT flood, idle connections, and local users at the inner listener.

The inner listener is what ``smtp-policy proxy --print-postfix-config`` prints by default: a
unix socket in Postfix's public/ directory (0710 postfix:postdrop), trusted for XCLIENT.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from smtp_policy.lab.instance import free_port
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from smtp_policy.wire.smtp import ReplyReader, ServerReply
from tests.helpers import Daemon

pytestmark = pytest.mark.postfix

SERVICE = "smtp-policy-proxy"
INNER = [
    f"{SERVICE} unix n - n - - smtpd",
    "  -o syslog_name=postfix/proxied",
    "  -o smtpd_authorized_xclient_hosts=127.0.0.1",
    "  -o smtpd_client_port_logging=yes",
]
INNER_CONNECT = r"postfix/proxied/smtpd\[\d+\]: connect from"
ATTACK = b"XCLIENT ADDR=192.0.2.66 NAME=trusted.example.test\r\n" * 1000


@pytest.fixture(name="pf", scope="module")
def _pf(make_module_postfix: PostfixFactory) -> PrivatePostfix:
    return make_module_postfix(master_cf=INNER)


def inner_socket(pf: PrivatePostfix) -> Path:
    """Where master.cf's unix service lives: $queue_directory/public/NAME."""
    return pf.queue_dir / "public" / SERVICE


def start_proxy(pf: PrivatePostfix, tmp: Path, *extra: str) -> Daemon:
    """``smtp-policy proxy`` on a free loopback port, in front of the unix inner listener."""
    upstream = ("--upstream", f"unix:{inner_socket(pf)}", "--no-reverse-dns")
    return Daemon("proxy", tmp, *upstream, *extra, port=free_port()).start()


class Session:
    """A blocking SMTP client socket (optionally from another loopback address)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 30, (source, 0))
        self.replies = ReplyReader()

    def reply(self) -> ServerReply:
        """The next whole reply."""
        while (reply := self.replies.next_reply()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.replies.feed(data)
        return reply

    def command(self, line: bytes) -> ServerReply:
        """Send one line, read its reply."""
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def at_eof(self) -> bool:
        """Whether the proxy closed the connection."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def normal_session(port: int) -> float:
    """A 5-command session (EHLO, MAIL, RCPT, RSET, QUIT); its duration in seconds."""
    started = time.perf_counter()
    session = Session(port)
    assert session.reply().code == 220
    codes = [
        session.command(line).code
        for line in (
            b"EHLO normal.client.test",
            b"MAIL FROM:<sender@local.test>",
            b"RCPT TO:<alice@local.test>",
            b"RSET",
            b"QUIT",
        )
    ]
    session.sock.close()
    assert codes == [250, 250, 250, 250, 221]
    return time.perf_counter() - started


def attacker(port: int, source: str, until: float, outcomes: list[tuple[bool, bool]]) -> None:
    """Pipeline XCLIENT as fast as the proxy takes it, reconnecting; note (got 421, closed)."""
    while time.monotonic() < until:
        sock = socket.create_connection(("127.0.0.1", port), 10, (source, 0))
        sock.setblocking(False)
        received, closed = bytearray(), False
        while time.monotonic() < until and not closed:
            readable, writable, _ = select.select([sock], [sock], [], 0.1)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                closed = not chunk
                received += chunk
            if writable and not closed:
                with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                    sock.send(ATTACK)
        sock.close()
        outcomes.append((b"421 4.7.0" in received, closed))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_xclient_flood_does_not_stall_a_normal_client(
    pf: PrivatePostfix, tmp_path: Path, drill_report: Callable[[str], None]
) -> None:
    """Three clients pipeline XCLIENT flat out: each gets 421 and is closed, events stay few,
    and a normal client's sessions stay fast (compared with the same sessions without them)."""
    proxy = start_proxy(pf, tmp_path)
    try:
        baseline = [normal_session(proxy.tcp_port) for _ in range(10)]
        events_before = len(proxy.events.read())
        cpu_before = cpu_seconds(proxy.pid)
        outcomes: list[tuple[bool, bool]] = []
        until = time.monotonic() + 14
        attackers = [
            threading.Thread(target=attacker, args=(proxy.tcp_port, "127.0.0.4", until, outcomes))
            for _ in range(3)
        ]
        for thread in attackers:
            thread.start()
        under_attack = []
        while time.monotonic() < until - 1:
            under_attack.append(normal_session(proxy.tcp_port))
            time.sleep(0.05)
        for thread in attackers:
            thread.join(30)
        attack_cpu = cpu_seconds(proxy.pid) - cpu_before
        events = proxy.events.read()[events_before:]
        attacker_events = [e for e in events if e.get("client_addr") == "127.0.0.4"]
        ratio = statistics.median(under_attack) / statistics.median(baseline)
        drill_report(
            f"normal session median {statistics.median(baseline) * 1000:.1f} ms alone, "
            f"{statistics.median(under_attack) * 1000:.1f} ms under attack (x{ratio:.1f}, "
            f"{len(under_attack)} sessions); attacker sessions {len(outcomes)}, "
            f"{sum(got for got, _ in outcomes)} got 421; attacker events "
            f"{len(attacker_events)} ({sum(len(str(e)) for e in attacker_events)} bytes); "
            f"proxy CPU {attack_cpu:.2f} s in 14 s"
        )
        assert ratio < 10
        finished = [outcome for outcome in outcomes if outcome[1]]
        assert finished, outcomes
        assert all(got_421 for got_421, _ in finished)
        assert len(attacker_events) <= 6 * len(outcomes)
        assert [e for e in attacker_events if e.get("repeated")]
        assert attack_cpu < 14 * 0.5  # the flood no longer keeps the proxy busy
    finally:
        proxy.stop()


def _inner_connects(pf: PrivatePostfix, since: int) -> int:
    return len(pf.log_matches(INNER_CONNECT, since=since))


def test_idle_connections_take_no_inner_smtpd(pf: PrivatePostfix, tmp_path: Path) -> None:
    """100 idle connections from two addresses: capped per address, no inner smtpd taken, timed
    out after --greet-timeout; a normal client is served meanwhile."""
    proxy = start_proxy(pf, tmp_path, "--max-per-address", "20", "--greet-timeout", "4")
    idle: list[Session] = []
    try:
        normal_session(proxy.tcp_port)  # the proxy has learnt Postfix's greeting
        mark = len(pf.maillog_lines())
        refused = 0
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(50):
                session = Session(proxy.tcp_port, source)
                greeting = session.reply()
                if greeting.code == 220:
                    idle.append(session)
                    continue
                assert greeting.code == 421  # the text is the admin's ([texts] 4.7.0)
                assert greeting.lines[0].startswith("4.7.0 ")
                assert session.at_eof()
                session.sock.close()
                refused += 1
        assert (len(idle), refused) == (40, 60)
        assert normal_session(proxy.tcp_port) < 4  # served while the idle ones still wait
        assert _inner_connects(pf, mark) == 1  # the normal client's only
        for session in idle:
            reply = session.reply()
            assert reply.code == 421
            assert reply.lines[0].startswith("4.4.2 ")
            assert session.at_eof()
        assert _inner_connects(pf, mark) == 1
    finally:
        for session in idle:
            session.sock.close()
        proxy.stop()


def _as_nobody(sock: Path, groups: str) -> subprocess.CompletedProcess[str]:
    """A client as user nobody: connect, EHLO, XCLIENT; print the replies or the error."""
    script = (
        "import socket,sys,time\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\n"
        "except OSError as e:\n print('refused', e.errno); sys.exit(0)\n"
        "f=s.makefile('rb')\n"
        "print(f.readline().decode().strip())\n"
        "s.sendall(b'EHLO local.user.test\\r\\n')\n"
        "while (line := f.readline().decode().strip())[3:4] == '-': pass\n"
        "s.sendall(b'XCLIENT ADDR=192.0.2.77 NAME=spoofed.example.test\\r\\n')\n"
        "print(f.readline().decode().strip())\n"
    )
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", groups, sys.executable, "-c"]
    return subprocess.run(
        [*argv, script, str(sock)], capture_output=True, text=True, timeout=30, check=False
    )


def test_inner_listener_is_closed_to_local_users(pf: PrivatePostfix, tmp_path: Path) -> None:
    """An unprivileged user cannot reach the inner listener (no XCLIENT spoofing); the same user
    in group postdrop (what the proxy's unit grants) can; the proxy passes its clients on."""
    sock = inner_socket(pf)
    assert sock.is_socket()
    stranger = _as_nobody(sock, "--clear-groups")
    assert stranger.returncode == 0, stranger.stderr
    assert stranger.stdout.split() == ["refused", "13"]  # EACCES: public/ is 0710
    member = _as_nobody(sock, "--groups=postdrop")
    assert member.returncode == 0, member.stderr
    assert member.stdout.splitlines()[1].startswith("220 ")  # XCLIENT believed
    pf.wait_for_log(r"disconnect from spoofed\.example\.test\[192\.0\.2\.77\]")
    proxy = start_proxy(pf, tmp_path)
    try:
        assert normal_session(proxy.tcp_port) > 0
        pf.wait_for_log(  # the client's own address and port, as the proxy's XCLIENT said
            r"postfix/proxied/smtpd\[\d+\]: disconnect from unknown\[127\.0\.0\.1\]:\d+ "
            r"ehlo=1 xclient=0/1 mail=1 rcpt=1 rset=1 quit=1"
        )
    finally:
        proxy.stop()
