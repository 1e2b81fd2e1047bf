"""`smtp-policy check-config` as a command: exit codes and one line per problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def write(base: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``base/name`` (creating directories) and return the path."""
    path = base / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m smtp_policy check-config ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "smtp_policy", "check-config", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )


def test_check_config_ok(tmp_path: Path) -> None:
    """A good file: exit 0, "OK: <files read>" and the plain 221 notice."""
    good = write(tmp_path, "good.toml", '[banner]\ngoodbye = "See you"\n')
    result = run_check(str(good))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"OK: shipped defaults, {good}"
    assert any(
        line.startswith("notice: banner.goodbye: only the smtp-policy proxy can send")
        and "hard-code" in line
        for line in lines
    )
    assert "notice: banner.greeting: Postfix main.cf: smtpd_banner = $myhostname ESMTP" in lines
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            '[milter]\nlisten = "nonsense"\n',
            "{file}:2: milter.listen: cannot parse 'nonsense'",
            id="bad-value",
        ),
        pytest.param("[milter\n", "{file}:1: invalid TOML: ", id="broken-toml"),
        pytest.param(None, "{file}: cannot read: No such file or directory", id="missing"),
    ],
)
def test_check_config_problems(tmp_path: Path, content: str | None, expected: str) -> None:
    """A bad file: exit 1, one line per problem, never a traceback."""
    file = tmp_path / "bad.toml"
    if content is not None:
        file.write_text(content)
    result = run_check(str(file))
    assert result.returncode == 1
    assert result.stdout.startswith(expected.format(file=file)), result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_check_config_notes_connect_stage_rejects(tmp_path: Path) -> None:
    """A reject rule at connect gets a notice: Postfix answers a milter with fixed text."""
    file = write(
        tmp_path,
        "c.toml",
        '[[rules]]\nname = "nope"\nstage = "connect"\naction = "reject"\n'
        'client_network = ["192.0.2.0/24"]\n',
    )
    result = run_check(str(file))
    assert result.returncode == 0
    assert "notice: rules 'nope': at stage connect Postfix answers" in result.stdout


def test_check_config_warns_and_exits_0(tmp_path: Path) -> None:
    """Warnings (an example domain, a placeholder footers never fill) print FILE:LINE, exit 0."""
    file = write(
        tmp_path,
        "w.toml",
        '[texts]\nhelp_url = "https://help.example.com/e#{reason}"\n'
        '[texts.reason.user_unknown]\nexternal = "No mailbox {recipient} here."\n',
    )
    result = run_check(str(file))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"OK: shipped defaults, {file}"
    assert f"warning: {file}:2: texts.help_url: help.example.com: an example domain" in (
        result.stdout
    )
    assert (
        f"warning: {file}:4: texts.reason.user_unknown.external: {{recipient}} is always empty "
        "in reject footers and DSN texts" in result.stdout
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_check_config_prints_warnings_after_problems(tmp_path: Path) -> None:
    """With problems too: every problem, then the warnings; exit 1 for the problems."""
    file = write(
        tmp_path, "b.toml", '[milter]\ntimeout = -1\n[banner]\ngoodbye = "Bye from example.org"\n'
    )
    result = run_check(str(file))
    assert result.returncode == 1
    first, *rest = result.stdout.splitlines()
    assert first.startswith(f"{file}:2: milter.timeout:")
    assert rest == [
        f"warning: {file}:4: banner.goodbye: example.org: an example domain (RFC 2606), not "
        "yours, in what people read: write your own, or leave the key out"
    ]


def test_the_shipped_example_checks_clean() -> None:
    """config/config.toml as shipped: OK, and not one warning."""
    result = run_check(str(ROOT / "config" / "config.toml"))
    assert result.returncode == 0, result.stdout
    assert "warning:" not in result.stdout
