"""The policy delegation server, as smtpd talks to it."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtp_policy.lab.instance import free_port
from tests.helpers import Daemon, read_events, running

RCPT = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=192.0.2.1\nclient_name=mail.example.com\nhelo_name=mail.example.com\n"
    b"queue_id=\nsender=alice@example.com\nrecipient=bob@local.test\nrecipient_count=0\n"
    b"instance=123.456\nsize=1200\n\n"
)


@pytest.fixture(name="policy", scope="module")
def _policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    port = free_port()
    policy = Daemon("policy", tmp_path_factory.mktemp("policy"), port=port)
    with running(policy):
        yield port, policy.events.path


def _recv_answer(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = conn.recv(1000)
        if not chunk:
            break
        data += chunk
    return data


def test_requests_are_recorded_and_answered_dunno(policy: tuple[int, Path]) -> None:
    """Two requests on one connection: two DUNNO answers, two events with every attribute."""
    port, events = policy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(RCPT)
        assert _recv_answer(conn) == b"action=DUNNO\n\n"
        conn.sendall(RCPT.replace(b"RCPT", b"END-OF-MESSAGE"))
        assert _recv_answer(conn) == b"action=DUNNO\n\n"
    got = read_events(events)
    requests = [e for e in got if e["event"] == "policy_request"]
    assert [e.get("stage") for e in requests[-2:]] == ["rcpt", "eom"]
    last = requests[-2]
    assert last["source"] == "policy"
    assert last.get("client_addr") == "192.0.2.1"
    assert last.get("sender") == "alice@example.com"
    assert last.get("recipient") == "bob@local.test"
    assert last.get("queue_id") is None
    assert last["instance"] == "123.456"
    assert last["size"] == "1200"
    assert last["action"] == "DUNNO"


def test_bad_requests_close_only_their_connection(policy: tuple[int, Path]) -> None:
    """A line without '=', an over-long line and 8-bit values: no crash, others still served."""
    port, events = policy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as bad:
        bad.sendall(b"garbage line\n\n")
        assert bad.recv(100) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as long:
        long.sendall(b"sender=" + b"x" * 20000 + b"\n")
        assert long.recv(100) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as eight_bit:
        eight_bit.sendall(RCPT.replace(b"alice", b"\xe9l\xffce"))
        assert _recv_answer(eight_bit) == b"action=DUNNO\n\n"
    errors = read_events(events)
    assert sum(1 for e in errors if e["event"] == "error") >= 2


RULES = """
[[rules]]
name = "refuse-spam-test"
stage = "rcpt"
sender = ["*@spam.test"]
action = "reject"
code = 554
enhanced = "5.7.1"
reason = "blocked"
text = "Sorry, we do not take mail from {sender}.\\nAsk postmaster@local.test: 100% safe."
"""


def test_rules_decide_and_reload(tmp_path: Path) -> None:
    """A matching rule answers its code and sanitized text; SIGHUP with a bad file keeps it."""
    config = tmp_path / "config.toml"
    config.write_text(RULES)
    port = free_port()
    policy = Daemon("policy", tmp_path, "--config", str(config), port=port)
    events = policy.events.path
    with running(policy):
        spam = RCPT.replace(b"alice@example.com", b"bob@spam.test")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(spam)
            answer = _recv_answer(conn).decode()
            assert answer.startswith(
                "action=554 5.7.1 Sorry, we do not take mail from bob@spam.test."
            )
            assert "100% safe." in answer
            assert answer.count("\n") == 2
            conn.sendall(RCPT)
            assert _recv_answer(conn) == b"action=DUNNO\n\n"
        config.write_text("[[rules]]\nname = 1\n")
        policy.send_signal(signal.SIGHUP)
        policy.wait_for(lambda e: "reload refused" in str(e.get("text")), 10)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(spam)
            assert _recv_answer(conn).startswith(b"action=554 5.7.1")
    got = read_events(events)
    decided = [e for e in got if e.get("rule") == "refuse-spam-test"]
    assert len(decided) == 2
    assert any("reload refused" in str(e.get("text")) for e in got)
