"""`smtp-policy preview` and `smtp-policy rules test`: the dry runs, run as commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HELO = "504 5.5.2 <ws42>: Helo command rejected: need fully-qualified hostname"
TEXTS = """
[texts.code.504]
external = "Please use your server's full name in HELO. {action}"
internal = "Our server refused the HELO name."
"""
RULES = """
[[rules]]
name = "partners-no-lists"
stage = "rcpt"
sender = ["*@partner.test"]
recipient = ["all@*"]
action = "reject"
code = 550
enhanced = "5.7.1"
reason = "blocked"
text = "Lists are closed to partners."

[[rules]]
name = "hold-big-from-partners"
stage = "mail"
sender = ["*@partner.test"]
size_over = 1000000
action = "quarantine"
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtp_policy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_preview_of_a_postfix_rejection_shows_its_footer(tmp_path: Path) -> None:
    """The reply as sent, then the footer lines with the same codes, and what chose them."""
    proc = run("preview", "--config", _config(tmp_path, TEXTS), HELO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("What the client reads")
    assert lines[1] == f"  504-{HELO[4:]}"
    assert lines[2].startswith("  504 5.5.2 Please use your server's full name in HELO.")
    assert "texts.code.504.external" in proc.stdout
    assert "Our server refused the HELO name." in proc.stdout  # the bounce's words
    assert "knowledge rule postfix.helo" in proc.stdout


def test_preview_json(tmp_path: Path) -> None:
    proc = run(
        "preview", "--json", "--config", _config(tmp_path, TEXTS), "--recipient", "bob@b.test",
        "550 5.1.1 <bob@b.test>: Recipient address rejected: User unknown",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data.get("reason") == "user_unknown"
    assert data["client_reads"][0].startswith("550-5.1.1 <bob@b.test>")
    assert data["footer"]["result"] and data["footer"]["text_entry"] == "texts.default.external"
    assert data["dsn"]["bounce_line"].startswith("<bob@b.test>: ")
    assert data["dsn"]["audience"] == "internal"


def test_preview_of_what_is_not_a_reply_is_one_line_and_exit_1() -> None:
    proc = run("preview", "--config", "/dev/null", "hello", "world")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("smtp-policy preview: not an SMTP reply")


def test_preview_of_a_bad_config_is_exit_1(tmp_path: Path) -> None:
    proc = run("preview", "--config", _config(tmp_path, "[texts\n"), HELO)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr


def test_rules_test_names_the_rule_that_fires(tmp_path: Path) -> None:
    config = _config(tmp_path, RULES)
    proc = run(
        "rules", "test", "--config", config, "--stage", "rcpt",
        "--sender", "x@partner.test", "--recipient", "all@corp.test", "--client", "192.0.2.7",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "Rule 'partners-no-lists' fires at stage rcpt: reject, reason blocked",
        "The client reads (external audience):",
        "  550 5.7.1 Lists are closed to partners.",
    ]
    held = run(
        "rules", "test", "--config", config, "--stage", "mail", "--json",
        "--sender", "x@partner.test", "--size", "2000000",
    )  # fmt: skip
    data = json.loads(held.stdout)
    assert (data["fires"], data.get("rule"), data["action"]) == (
        True,
        "hold-big-from-partners",
        "quarantine",
    )
    assert data["reply"] == []


def test_rules_test_says_when_none_fires(tmp_path: Path) -> None:
    proc = run(
        "rules", "test", "--config", _config(tmp_path, RULES), "--stage", "rcpt",
        "--sender", "x@other.test", "--recipient", "all@corp.test",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "No rule fires at stage rcpt (1 rule for this stage).\n"


def test_rules_test_bad_values_are_usage_errors(tmp_path: Path) -> None:
    config = _config(tmp_path, RULES)
    for bad in (["--stage", "later"], ["--stage", "mail", "--size", "big"],
                ["--stage", "connect", "--client", "300.1.1.1"], []):  # fmt: skip
        proc = run("rules", "test", "--config", config, *bad)
        assert proc.returncode == 2, bad
        assert "Traceback" not in proc.stderr
