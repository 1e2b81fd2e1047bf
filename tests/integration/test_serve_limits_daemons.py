"""Issue 16, item 8, against the real maps daemon: an idle flood does not use up its file
descriptors or lock Postfix out, and a lookup flood writes a bounded number of events."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from smtp_policy.lab.instance import free_port
from smtp_policy.wire.netstring import NetstringDecoder, encode
from tests.helpers import Daemon, read_events, running
from tests.integration.test_maps_server import needs_postmap, postmap

#: The units' ``LimitNOFILE=`` (systemd/smtp-policy-maps.service), and an idle flood past it.
UNIT_NOFILE = 512
IDLE_FLOOD = 600


@needs_postmap
def test_idle_flood_then_a_real_lookup(tmp_path: Path) -> None:
    """With the unit's file-descriptor limit, more idle connections than it allows: the cap
    (which closes the idlest) keeps descriptors free, and Postfix's lookup is answered.
    Without the cap, accept() fails (EMFILE) and the lookup (or a connect) times out."""
    port = free_port()
    with running(Daemon("maps", tmp_path, port=port, nofile=UNIT_NOFILE)):
        idle = [
            socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(IDLE_FLOOD)
        ]
        try:
            done = postmap(port, "footer", "554 5.7.1 <a@b>: Relay access denied")
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip()
        finally:
            for sock in idle:
                sock.close()


def test_lookup_flood_writes_bounded_events(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text("[maps]\nevents_per_second = 100\n")
    maps = Daemon("maps", tmp_path, "--config", str(config), port=port)
    with running(maps):
        request = encode(b"footer 554 5.7.1 <x@y>: Relay access denied " + b"k" * 2000)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(request * 3000)
            answers = NetstringDecoder()
            answered = 0
            while answered < 3000:  # count whole answers: a footer's text may hold commas
                chunk = sock.recv(1 << 16)
                assert chunk
                answers.feed(chunk)
                while answers.next() is not None:
                    answered += 1
            seconds = time.monotonic() - started
            time.sleep(1.1)  # the next second's first lookup reports what the flood held back
            sock.sendall(request)
            assert sock.recv(1 << 16)
    events = read_events(maps.events.path)
    lookups = [e for e in events if e["event"] == "lookup"]
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(lookups) <= 100 * (int(seconds) + 2) + 1
    assert warnings, "no warning counted the held-back lookups"
    assert sum(int(w["held_back"]) for w in warnings) == 3001 - len(lookups)
