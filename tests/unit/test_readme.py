"""The README tells the truth about the commands, the units and what the demo touches."""

from __future__ import annotations

import re
from pathlib import Path

from smtp_policy.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _table_rows() -> list[str]:
    section = README.split("## The pieces", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `smtp-policy")]


def test_every_command_has_a_row_in_the_command_table() -> None:
    first_cells = [row.split("|")[1] for row in _table_rows()]
    for name in COMMANDS:
        top = name.split()[0]
        assert any(re.search(rf"`(smtp-policy )?{re.escape(top)}[` ]", c) for c in first_cells), (
            name
        )
    assert any("`smtp-policy demo --explain-only`" in cell for cell in first_cells)


def test_every_shipped_unit_is_named() -> None:
    units = [*sorted((ROOT / "systemd").glob("*.service")), ROOT / "systemd/smtp-policy.target"]
    for unit in units:
        assert f"`{unit.name}`" in README, unit.name


def test_no_blanket_fail_open_promise() -> None:
    """The proxy answers 421 when Postfix behind it is down: no 'nothing can block mail'."""
    assert "can lose or\nblock mail" not in README
    assert not re.search(r"nothing it does can (lose or )?block mail", README, re.I)
    assert "## What fails open and what does not" in README
    assert "421 4.3.0" in README


def test_what_the_demo_installs_and_creates_is_said() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for thing in ("smtest", "/var/cache/smtp-policy/sendmail-debs", ".venv", "/etc/postfix",
                  "/tmp/smtp-policy-demo-", "/tmp/smtp-policy-postfix-", "--explain-only"):  # fmt: skip
        assert thing in quick, thing


def test_install_and_uninstall_use_postfix_config_apply_and_remove() -> None:
    install = README.split("## Install on a real server", 1)[1].split("\n## ", 1)[0]
    assert "smtp-policy postfix-config --apply" in install
    assert ">> /etc/postfix/main.cf" not in install
    uninstall = README.split("## Uninstall", 1)[1].split("\n## ", 1)[0]
    assert "smtp-policy postfix-config --remove" in uninstall
    assert "systemctl disable --now" in uninstall
