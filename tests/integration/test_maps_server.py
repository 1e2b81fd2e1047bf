"""The socketmap server, driven by Postfix's own postmap and by raw sockets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtp_policy.lab.instance import free_port
from tests.helpers import Daemon, read_events, running

POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"


@pytest.fixture(name="maps", scope="module")
def _maps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    port = free_port()
    maps = Daemon("maps", tmp_path_factory.mktemp("maps"), port=port)
    with running(maps):
        yield port, maps.events.path


def postmap(port: int, name: str, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [POSTMAP, "-q", key, f"socketmap:inet:127.0.0.1:{port}:{name}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


needs_postmap = pytest.mark.skipif(not os.path.exists(POSTMAP), reason="postfix is not installed")


@needs_postmap
def test_footer_for_a_postfix_rejection(maps: tuple[int, Path]) -> None:
    """postmap gets a footer explaining an unknown user; the lookup is an upstream event."""
    port, events = maps
    key = "550 5.1.1 <nobody@local.test>: Recipient address rejected: User unknown in local recipient table"
    proc = postmap(port, "footer", key)
    assert proc.returncode == 0, proc.stderr
    assert "\\n" not in proc.stdout.strip() or proc.stdout.count("\\n") <= 3
    assert "mailbox" in proc.stdout.lower() or "address" in proc.stdout.lower()
    event = [e for e in read_events(events) if e.get("map") == "footer"][-1]
    assert event["source"] == "maps"
    assert event.get("direction") == "upstream"
    assert event.get("reason") == "user_unknown"
    assert event.get("text") == key
    assert event["status"] == "OK"


@needs_postmap
def test_dsn_keeps_status_and_remote_reply(maps: tuple[int, Path]) -> None:
    """The DSN text of a bounce keeps the status code and the remote's reply, friendlier text
    first (deferrals are left alone by default: test_one_story_postfix.py)."""
    port, events = maps
    original = (
        "host mx.example.com[192.0.2.1] said: 552 5.2.2 The email account that you tried "
        "to reach is over quota. (in reply to RCPT TO command)"
    )
    proc = postmap(port, "dsn", f"5.2.2 {original}")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("5.2.2 ")
    assert out.endswith(f"({original})")
    assert len(out) > len(original) + 20
    event = [e for e in read_events(events) if e.get("map") == "dsn"][-1]
    assert event.get("direction") == "downstream"
    assert event.get("reason") == "mailbox_full"
    assert event.get("friendly") == out


@needs_postmap
def test_success_is_not_touched(maps: tuple[int, Path]) -> None:
    """A 2.x.x status and a 250 reply get NOTFOUND (postmap exits 1)."""
    port, _ = maps
    assert postmap(port, "dsn", "2.0.0 250 2.0.0 Ok: queued as 153053D").returncode == 1
    assert postmap(port, "footer", "250 2.1.5 Ok").returncode == 1


@needs_postmap
def test_unknown_map_is_a_perm_error(maps: tuple[int, Path]) -> None:
    """A map name the server does not serve is a configuration error (PERM)."""
    port, _ = maps
    proc = postmap(port, "nosuchmap", "x")
    assert proc.returncode != 0
    assert "unknown map" in proc.stderr


def test_bad_clients_do_not_stop_the_server(maps: tuple[int, Path]) -> None:
    """Malformed and oversized netstrings close that connection only; others keep working."""
    port, events = maps
    with socket.create_connection(("127.0.0.1", port), timeout=5) as bad:
        bad.sendall(b"xyz:footer,")
        assert bad.recv(100) == b""  # closed by the server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as big:
        big.sendall(b"200000:footer " + b"x" * 1000)
        assert big.recv(100) == b""
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)  # never sends
    with socket.create_connection(("127.0.0.1", port), timeout=5) as good:
        good.sendall(b"24:footer 550 5.1.1 Unknown,")
        reply = good.recv(1000)
        assert reply.split(b":", 1)[1].startswith(b"OK ")
    silent.close()
    errors = [e for e in read_events(events) if e["event"] == "error"]
    assert any("bad netstring" in str(e.get("text")) for e in errors)
    assert any("exceeds" in str(e.get("text")) for e in errors)


def test_partial_writes_are_reassembled(maps: tuple[int, Path]) -> None:
    """A request split across many small writes gets one answer."""
    port, _ = maps
    request = b"24:footer 550 5.1.1 Unknown,"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(request)):
            conn.sendall(request[i : i + 1])
            time.sleep(0.001)
        assert conn.recv(1000).split(b":", 1)[1].startswith(b"OK ")
