"""`smtp-policy explain`: the admin's first tool and a stable contract."""

from __future__ import annotations

import json
import subprocess
import sys

CONTRACT = {
    "reply",
    "code",
    "enhanced",
    "class",
    "reason",
    "summary",
    "explanation",
    "action",
    "actor",
    "provider",
    "help_url",
    "rule",
}


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "smtp_policy", "explain", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_json_has_the_contract_fields() -> None:
    """--json prints one object with at least the documented fields; words are joined."""
    proc = run("--json", "550", "5.1.1", "<bob@example.com>:", "User", "unknown")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data.keys() >= CONTRACT
    assert data["reply"] == "550 5.1.1 <bob@example.com>: User unknown"
    assert data["code"] == 550
    assert data["enhanced"] == "5.1.1"
    assert data["class"] == "permanent"
    assert data["reason"] == "user_unknown"
    assert data["actor"] in {
        "sender",
        "sender_admin",
        "recipient",
        "recipient_admin",
        "postmaster",
        "nobody",
    }


def test_text_block_is_plain() -> None:
    """Without --json the output is a labelled block with no colour codes."""
    proc = run("452 4.2.2 Mailbox full")
    out = proc.stdout.decode()
    assert proc.returncode == 0
    assert "Reason:" in out and "mailbox_full" in out
    assert "What to do:" in out
    assert "\x1b" not in out


def test_jsonl_writes_one_object_per_line_and_survives_bad_lines() -> None:
    """Bad lines get an object with "error"; good lines around them are explained in order."""
    lines = [
        b'"550 5.1.1 User unknown"',
        b"not json",
        b'{"reply": "SMTP error 511"}',
        b"",
        b'{"other": 1}',
        b'"\xff\xfe invalid utf-8 \x00"',
        b"[1, 2]",
        b'{"reply": "421 4.7.0 Try again later"}',
    ]
    proc = run("--jsonl", stdin=b"\n".join(lines) + b"\n")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(out) == len(lines)
    assert [("error" in o) for o in out] == [False, True, False, True, True, True, True, False]
    assert out[0]["reason"] == "user_unknown"
    assert out[2]["enhanced"] == "5.1.1"
    assert out[7]["class"] == "transient"
    assert b"Traceback" not in proc.stderr


def test_jsonl_from_a_missing_file_is_one_clear_line() -> None:
    """A missing file is an error line and exit 2, not a traceback."""
    proc = run("--jsonl", "/nonexistent/replies.jsonl")
    assert proc.returncode == 2
    assert proc.stderr.decode().count("\n") == 1
    assert b"Traceback" not in proc.stderr


def test_reply_from_stdin() -> None:
    """With no words, the reply is read from standard input, multi-line replies included."""
    proc = run("--json", stdin=b"550-5.7.1 Rejected\r\n550 5.7.1 See https://x.test/\r\n")
    data = json.loads(proc.stdout)
    assert data["code"] == 550
    assert data["text"] == "Rejected See https://x.test/"
