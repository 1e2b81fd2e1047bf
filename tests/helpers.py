"""Helpers shared by tests that start smtp_policy daemons as real processes."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Wait until ``proc`` listens on ``port``; fail with its stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"server exited: {err!r}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not start listening")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a daemon; it must exit 0 without a traceback."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err


@contextlib.contextmanager
def running_daemon(command: str, events: Path, *extra: str) -> Iterator[int]:
    """``python -m smtp_policy COMMAND`` on a free loopback port; yields the port, stops it after."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smtp_policy",
            command,
            "--listen",
            f"inet:127.0.0.1:{port}",
            "--events",
            str(events),
            *extra,
        ],
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, proc)
        yield port
    finally:
        stop(proc)
