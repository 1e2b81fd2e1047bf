"""SMTP smuggling through the proxy into a real private Postfix (issue 16, item 3).

Postfix 3.7 on Debian 12 (``smtpd_forbid_bare_newline = no``) ends a message at
``<LF>.<LF>``, ``<LF>.<CR><LF>``, ``<CR><LF>.<LF>`` and ``.<CR><CR><LF>``. Each sequence is sent
inside one message with a second transaction after it: straight to Postfix the second message
is queued; through the proxy, whatever the inner listener's ``smtpd_forbid_bare_newline`` (no,
normalize, reject), exactly one message is queued, holding the would-be smuggled lines, and no
session hangs.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtp_policy.lab.instance import free_port
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from smtp_policy.wire.smtp import ReplyReader, ServerReply
from tests.helpers import Daemon

pytestmark = pytest.mark.postfix

SETTINGS = ("no", "normalize", "reject")
SEQUENCES = [
    pytest.param(b"\n.\n", id="lf-dot-lf"),
    pytest.param(b"\n.\r\n", id="lf-dot-crlf"),
    pytest.param(b"\r\n.\n", id="crlf-dot-lf"),
    pytest.param(b"\r\n.\r\r\n", id="dot-cr-cr-lf"),
]


def listener(port: int, setting: str) -> list[str]:
    """An inner smtpd that trusts the proxy, with this smtpd_forbid_bare_newline."""
    return [
        f"127.0.0.1:{port} inet n - n - - smtpd",
        f"  -o syslog_name=postfix/proxied-{setting}",
        "  -o smtpd_authorized_xclient_hosts=127.0.0.1",
        f"  -o smtpd_forbid_bare_newline={setting}",
        "  -o smtpd_forbid_bare_newline_exclusions=",
    ]


@pytest.fixture(name="ports", scope="module")
def _ports() -> dict[str, int]:
    return {setting: free_port() for setting in SETTINGS}


@pytest.fixture(name="pf", scope="module")
def _pf(make_module_postfix: PostfixFactory, ports: dict[str, int]) -> PrivatePostfix:
    lines = [line for setting, port in ports.items() for line in listener(port, setting)]
    return make_module_postfix(master_cf=lines)


@pytest.fixture(name="proxies", scope="module")
def _proxies(
    pf: PrivatePostfix, ports: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Daemon]]:
    started: dict[str, Daemon] = {}
    try:
        for setting, port in ports.items():
            tmp: Path = tmp_path_factory.mktemp(f"proxy-{setting}")
            upstream = ("--upstream", f"127.0.0.1:{port}", "--no-reverse-dns")
            started[setting] = Daemon("proxy", tmp, *upstream, port=free_port()).start()
        yield started
    finally:
        for proxy in started.values():
            proxy.stop()


def session(port: int, sequence: bytes, marker: str) -> list[ServerReply]:
    """One message with ``sequence`` and a second transaction inside; every reply to EOF."""
    smuggled = (
        b"MAIL FROM:<sender@local.test>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n"
        b"Subject: smuggled " + marker.encode() + b"\r\n\r\nforged\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        reader = ReplyReader()
        replies: list[ServerReply] = []

        def reply() -> ServerReply:
            while (got := reader.next_reply()) is None:
                data = sock.recv(65536)
                if not data:
                    raise EOFError(f"closed after {replies}")
                reader.feed(data)
            replies.append(got)
            return got

        assert reply().code == 220
        for line in (b"EHLO smuggler.test", b"MAIL FROM:<sender@local.test>"):
            sock.sendall(line + b"\r\n")
            assert reply().code == 250
        sock.sendall(b"RCPT TO:<alice@local.test>\r\nDATA\r\n")
        assert (reply().code, reply().code) == (250, 354)
        body = b"Subject: carrier " + marker.encode() + b"\r\n\r\nbody"
        sock.sendall(body + sequence + smuggled + b".\r\nQUIT\r\n")
        with contextlib.suppress(EOFError):  # read every reply until Postfix or the proxy closes
            for _ in range(20):
                reply()
    return replies[5:]


def queued(replies: list[ServerReply]) -> int:
    return sum(1 for r in replies if r.code == 250 and "queued as" in r.text)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_postfix_default_is_smuggled_into_without_the_proxy(
    pf: PrivatePostfix, sequence: bytes
) -> None:
    """The attack is real: straight to Postfix 3.7's default listener, two messages."""
    marker = uuid.uuid4().hex[:8]
    replies = session(pf.smtp_port, sequence, marker)
    assert queued(replies) == 2
    assert pf.wait_for_mail("bob", match=lambda m: marker in str(m["Subject"]))


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("sequence", SEQUENCES)
def test_proxy_queues_exactly_one_message(
    pf: PrivatePostfix, proxies: dict[str, Daemon], setting: str, sequence: bytes
) -> None:
    """Through the proxy: one message, the smuggled lines inside it, whatever Postfix says."""
    marker = uuid.uuid4().hex[:8]
    replies = session(proxies[setting].tcp_port, sequence, marker)
    assert [r.code for r in replies] == [250, 221], replies
    assert queued(replies) == 1
    (carrier,) = pf.wait_for_mail("alice", match=lambda m: marker in str(m["Subject"]))
    assert f"Subject: smuggled {marker}" in carrier.get_content()
    assert not [m for m in pf.mailbox("bob") if marker in str(m["Subject"])]
