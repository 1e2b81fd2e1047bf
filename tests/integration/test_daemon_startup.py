"""Daemons refuse bad starts with one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from smtp_policy.lab.instance import free_port
from tests.helpers import Daemon


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtp_policy", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "listen"),
    [
        pytest.param("maps", "inet:127.0.0.1:{port}", id="maps"),
        pytest.param("policy", "inet:127.0.0.1:{port}", id="policy"),
        pytest.param("milter", "inet:{port}@127.0.0.1", id="milter"),
    ],
)
def test_a_used_port_is_one_clear_line(command: str, listen: str, tmp_path: Path) -> None:
    """Listening on a port another process holds exits non-zero with one line on stderr."""
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        proc = run(
            command,
            "--listen",
            listen.format(port=port),
            "--events",
            str(tmp_path / "ev.jsonl"),
            "--config",
            "/dev/null",
        )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(port) in lines[0]


@pytest.mark.parametrize("command", ["maps", "policy", "milter"])
def test_a_bad_config_stops_the_daemon_with_the_check_config_message(
    command: str, tmp_path: Path
) -> None:
    """Every daemon refuses a bad configuration with the same message check-config prints."""
    bad = tmp_path / "config.toml"
    bad.write_text('[texts.reason.user_unknown]\ninternal = "hi {rcpt}"\n')
    check = run("check-config", str(bad))
    proc = run(command, "--config", str(bad), "--listen", "inet:127.0.0.1:1")
    assert check.returncode == 1
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    problem = check.stdout.strip().splitlines()[0]
    assert "unknown placeholder {rcpt}" in problem
    assert problem in proc.stderr


@pytest.mark.parametrize("command", ["maps", "policy", "milter"])
def test_a_config_warning_is_logged_and_the_daemon_starts(command: str, tmp_path: Path) -> None:
    """A warning is one line on stderr at start; the daemon serves anyway and stops cleanly."""
    config = tmp_path / "config.toml"
    config.write_text('[texts]\nhelp_url = "https://help.example.com/e"\n')
    daemon = Daemon(command, tmp_path, "--config", str(config), port=free_port()).start()
    daemon.stop()
    warnings = [line for line in daemon.stderr().splitlines() if "warning" in line]
    assert warnings == [
        f"smtp-policy {command}: warning: {config}:2: texts.help_url: help.example.com: an "
        "example domain (RFC 2606), not yours, in what people read: write your own, or leave "
        "the key out"
    ]
