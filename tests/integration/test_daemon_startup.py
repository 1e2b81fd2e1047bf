"""Daemons refuse bad starts with one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from smtp_policy.lab.instance import free_port, poll
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


@pytest.mark.parametrize("command", ["maps", "policy", "milter", "proxy", "follow"])
def test_a_bad_config_stops_the_daemon_with_the_check_config_message(
    command: str, tmp_path: Path
) -> None:
    """Every daemon refuses a bad configuration with the same message check-config prints."""
    bad = tmp_path / "config.toml"
    bad.write_text('[texts.reason.user_unknown]\ninternal = "hi {rcpt}"\n')
    check = run("check-config", str(bad))
    where = ("--once", "-") if command == "follow" else ("--listen", "inet:127.0.0.1:1")
    proc = run(command, "--config", str(bad), *where)
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


@pytest.mark.parametrize(
    ("command", "section", "options"),
    [
        pytest.param("maps", '[maps]\nlisten = "inet:127.0.0.1:{port}"\n', (), id="maps"),
        pytest.param("policy", '[policy]\nlisten = "inet:127.0.0.1:{port}"\n', (), id="policy"),
        pytest.param("milter", '[milter]\nlisten = "inet:127.0.0.1:{port}"\n', (), id="milter"),
        pytest.param("proxy", "", ("--listen", "inet:127.0.0.1:{port}"), id="proxy"),
    ],
)
def test_every_daemon_writes_its_events_where_the_config_says(
    command: str, section: str, options: tuple[str, ...], tmp_path: Path
) -> None:
    """[events] output, with no --events: the started and stopped events land in that file."""
    port = free_port()
    events = tmp_path / "events" / "daemon.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(f'[events]\noutput = "{events}"\n\n' + section.format(port=port))
    argv = [sys.executable, "-m", "smtp_policy", command, "--config", str(config)]
    argv += [option.format(port=port) for option in options]
    err = tmp_path / "stderr"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
    try:
        poll(lambda: '"started"' in _text(events) or None, 60, err.read_text)
    finally:
        proc.terminate()
        stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.read_text()
    assert stdout == b""
    names = [json.loads(line)["event"] for line in _text(events).splitlines()]
    assert names[0] == "started" and names[-1] == "stopped"


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize("command", ["maps", "policy", "milter", "follow"])
def test_an_events_file_that_cannot_be_written_is_one_line(command: str, tmp_path: Path) -> None:
    """--events under a regular file: one line naming it, a non-zero exit."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    target = blocker / "events.jsonl"
    where = (
        ("--once", "-") if command == "follow" else ("--listen", f"inet:127.0.0.1:{free_port()}")
    )
    proc = run(command, "--config", "/dev/null", "--events", str(target), *where)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(target) in lines[0], proc.stderr
