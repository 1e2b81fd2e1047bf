"""Helpers shared by tests that start smtp_policy daemons as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The sample mail logs the tests read (see its README.md).
SAMPLES = Path(__file__).resolve().parent / "samples"


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


def is_stopped(pid: int) -> bool:
    """Whether the kernel shows ``pid`` stopped (state ``T`` in /proc/PID/stat)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def sigstop(pid: int, timeout: float = 30) -> None:
    """SIGSTOP ``pid`` and wait until the kernel shows it stopped."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not is_stopped(pid):
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.005)


class DaemonProcess:
    """``smtp-policy maps|policy`` as a real process on loopback: started, stopped, killed,
    paused and resumed by the test, its events read back."""

    def __init__(self, command: str, tmp: Path, config: Path, port: int | None = None) -> None:
        self.command = command
        self.port = port or free_port()
        self.events = tmp / f"{command}-events.jsonl"
        self.argv = [
            sys.executable,
            "-m",
            "smtp_policy",
            command,
            "--listen",
            f"inet:127.0.0.1:{self.port}",
            "--events",
            str(self.events),
            "--config",
            str(config),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon and wait until it listens."""
        self.proc = subprocess.Popen(self.argv, stderr=subprocess.PIPE)
        wait_port(self.port, self.proc)

    def kill(self) -> None:
        """SIGKILL: down without a chance to clean up."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.communicate(timeout=30)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP, and wait until the kernel shows the process stopped."""
        assert self.proc is not None
        sigstop(self.proc.pid)

    def resume(self) -> None:
        """SIGCONT."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (after a SIGCONT, should it be paused): it must exit 0 without a traceback."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            stop(self.proc)
        self.proc = None

    def records(self) -> list[dict[str, Any]]:
        """The events written so far (a line cut by SIGKILL is skipped)."""
        out = []
        for line in self.events.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
