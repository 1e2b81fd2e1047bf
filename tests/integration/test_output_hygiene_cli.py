"""Real daemons refuse an events or state file that is a link (issue 16, items 2 and 11):
one line and exit 1 at start, an error event and the old file kept on SIGHUP; explain --jsonl
writes valid UTF-8 whatever the input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from smtp_policy.lab.instance import free_port
from tests.helpers import Daemon

SCRIPT = "#!/bin/sh\necho safe\n"
NOBODY = 65534


def run(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "smtp_policy", *argv],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def _attacked(tmp_path: Path) -> tuple[Path, Path]:
    """An events directory a local user owns, its events file a link to a root-owned script."""
    target = tmp_path / "root-script.sh"
    target.write_text(SCRIPT)
    folder = tmp_path / "events"
    folder.mkdir()
    link = folder / "events.jsonl"
    link.symlink_to(target)
    if os.geteuid() == 0:
        os.chown(folder, NOBODY, NOBODY)
        os.lchown(link, NOBODY, NOBODY)
    return link, target


@pytest.mark.parametrize("command", ["maps", "policy", "milter", "follow"])
def test_a_daemon_refuses_a_symlinked_events_file_at_start(command: str, tmp_path: Path) -> None:
    """One line naming the file and why, exit 1, the link's target untouched."""
    link, target = _attacked(tmp_path)
    where = (
        ("--once", "-") if command == "follow" else ("--listen", f"inet:127.0.0.1:{free_port()}")
    )
    proc = run(command, "--config", "/dev/null", "--events", str(link), *where)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(link) in lines[0] and "symbolic link" in lines[0], stderr
    assert target.read_text() == SCRIPT


def test_the_maps_server_refuses_a_link_swapped_in_before_sighup(tmp_path: Path) -> None:
    """The file is replaced by a link to a root-owned script, then SIGHUP: the daemon keeps
    writing the file it has open and records why; the script is never written."""
    target = tmp_path / "root-script.sh"
    target.write_text(SCRIPT)
    folder = tmp_path / "events"
    folder.mkdir()
    path = folder / "events.jsonl"
    proc = Daemon("maps", tmp_path, port=free_port(), events=path)
    try:
        proc.start()
        moved = folder / "moved.jsonl"
        path.rename(moved)
        path.symlink_to(target)
        proc.send_signal(signal.SIGHUP)
        proc.events.path = moved
        errors = proc.wait_for(lambda e: e["event"] == "error")
        proc.wait_for(lambda e: e["event"] == "reloaded")
    finally:
        proc.stop()
    assert "cannot reopen" in errors[0]["text"] and "symbolic link" in errors[0]["text"]
    assert target.read_text() == SCRIPT
    assert path.is_symlink()


def test_follow_refuses_a_symlinked_state_file(tmp_path: Path) -> None:
    """A link at the state file's path: one line, exit 1, nothing read through it."""
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "secret"
    target.write_text("{}")
    (state / "follow-state.json").symlink_to(target)
    proc = run("follow", "--config", "/dev/null", "--once", "-", "--state", str(state),
               "--events", str(tmp_path / "events.jsonl"))  # fmt: skip
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "state file" in lines[0] and "symbolic link" in lines[0], stderr
    assert target.read_text() == "{}"


def test_explain_jsonl_writes_valid_utf8_for_lone_surrogates(tmp_path: Path) -> None:
    """A JSON input line with ``\\udcff`` gives a strict-UTF-8 line jq accepts, one per input."""
    source = b'"550 5.1.1 \\udcff\\u2028 \\u0085 <a@b> User unknown\\ud800"\n{"reply": "451 \\u001b[2J"}\n'
    proc = run("explain", "--jsonl", stdin=source)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode("utf-8")  # strict
    lines = text.splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert (
        first["reply"].startswith("550 5.1.1 \\xff\u2028") and first.get("reason") == "user_unknown"
    )
    if shutil.which("jq"):
        jq = subprocess.run(["jq", "-c", ".reply"], input=proc.stdout, capture_output=True,
                            timeout=30, check=False)  # fmt: skip
        assert jq.returncode == 0, jq.stderr
        assert len(jq.stdout.splitlines()) == 2


def test_explain_text_output_shows_escape_sequences_escaped() -> None:
    """An ANSI sequence in the reply is shown as ``\\x1b``, never sent to the terminal."""
    proc = run("explain", "550 5.1.1 <a\x1b[2J\x1b]0;owned\x07@b>: User unknown")
    assert proc.returncode == 0, proc.stderr
    assert b"\x1b" not in proc.stdout and b"\x07" not in proc.stdout
    assert b"\\x1b[2J" in proc.stdout
