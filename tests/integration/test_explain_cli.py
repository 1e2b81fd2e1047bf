"""`smtp-policy explain`: the admin's first tool and a stable contract."""

from __future__ import annotations

import json
import os
import pty
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
    assert data.get("code") == 550
    assert data.get("enhanced") == "5.1.1"
    assert data.get("class") == "permanent"
    assert data.get("reason") == "user_unknown"
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
    assert out[0].get("reason") == "user_unknown"
    assert out[2].get("enhanced") == "5.1.1"
    assert out[7].get("class") == "transient"
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
    assert data.get("code") == 550
    assert data.get("text") == "Rejected See https://x.test/"


def test_several_replies_on_stdin_get_one_answer_each() -> None:
    """A new code line or a blank line starts a reply; NNN- lines stay with their last line."""
    stdin = b"550-5.7.1 Rejected\r\n550 5.7.1 See https://x.test/\r\n452 4.2.2 Mailbox full\n"
    data = [json.loads(line) for line in run("--json", stdin=stdin).stdout.splitlines()]
    assert [d.get("code") for d in data] == [550, 452]
    assert data[0].get("text") == "Rejected See https://x.test/"
    text = run(stdin=stdin + b"\nUser unknown\n").stdout.decode()
    assert text.count("Summary:") == 3


def test_the_text_starts_with_the_summary_and_fits_100_columns() -> None:
    proc = run("550 5.1.1 <bob@example.com>: Recipient address rejected: " + "long " * 40)
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("Summary:")
    assert all(len(line) <= 100 for line in lines)


def test_empty_input_is_a_usage_error() -> None:
    for args, stdin in (((), b""), ((), b"  \n\t\n"), (("  ",), None)):
        proc = run(*args, stdin=stdin)
        assert proc.returncode == 2
        assert proc.stdout == b""
        assert proc.stderr.decode().count("\n") == 1


def _on_a_tty(env: dict[str, str]) -> str:
    """Run explain with its standard output on a pseudo-terminal; return what it wrote."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "smtp_policy", "explain", "452 4.2.2 Mailbox full"],
            stdout=follower,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
            check=False,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert proc.returncode == 0, proc.stderr
    return b"".join(chunks).decode()


def test_colour_on_a_terminal_unless_no_color() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    assert "\x1b[1mSummary:" in _on_a_tty(env)
    assert "\x1b" not in _on_a_tty({**env, "NO_COLOR": "1"})
