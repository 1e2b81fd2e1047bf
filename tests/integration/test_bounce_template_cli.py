"""`smtp-policy postfix bounce-template`, validated by Postfix's own postconf -b."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"


@pytest.mark.skipif(not Path(POSTCONF).exists(), reason="postfix is not installed")
def test_postconf_expands_every_template(tmp_path: Path) -> None:
    """postconf -b reads the rendered file and expands all four templates with our wording."""
    out = tmp_path / "bounce.cf"
    proc = subprocess.run(
        [sys.executable, "-m", "smtp_policy", "postfix", "bounce-template", "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    expanded = subprocess.run(
        [POSTCONF, "-b", str(out)], capture_output=True, text=True, check=True
    ).stdout
    for name in ("failure", "delay", "success", "verify"):
        assert f"expanded_{name}_text = <<EOF" in expanded
    assert "$myhostname" not in expanded  # parameters were expanded by Postfix
    assert "Your message could not be delivered to the recipient(s) below" in expanded
    assert "your mail administrator" in expanded  # no contact configured: no made-up address
    raw = subprocess.run(
        [POSTCONF, "-t", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert "Subject: Undeliverable: your message could not be delivered" in raw


@pytest.mark.skipif(not Path(POSTCONF).exists(), reason="postfix is not installed")
def test_postconf_reads_the_german_template_from_the_config(tmp_path: Path) -> None:
    """[bounce] language, contact and help link reach the file Postfix reads."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[bounce]\nlanguage = "de"\ncontact = "helpdesk@local.test"\n'
        'help_url = "https://help.local.test/mail"\n',
        encoding="utf-8",
    )
    out = tmp_path / "bounce.cf"
    command = [sys.executable, "-m", "smtp_policy", "postfix", "bounce-template"]
    proc = subprocess.run(
        [*command, "--config", str(config), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    expanded = subprocess.run(
        [POSTCONF, "-b", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert "Ihre Nachricht konnte an die unten genannten Empfänger nicht zugestellt" in expanded
    assert "leiten Sie diesen Bericht an helpdesk@local.test weiter" in expanded
    assert "Hilfe: https://help.local.test/mail" in expanded
    assert "$bounce_size_limit" not in expanded  # expanded by Postfix to its number


def test_a_bad_bounce_section_is_one_line_per_problem(tmp_path: Path) -> None:
    """check-config's problems, FILE:LINE first; no traceback, exit 1, nothing written."""
    config = tmp_path / "config.toml"
    config.write_text('[bounce]\nlanguage = "klingon"\ncontact = "nobody"\n', encoding="utf-8")
    out = tmp_path / "bounce.cf"
    command = [sys.executable, "-m", "smtp_policy", "postfix", "bounce-template"]
    proc = subprocess.run(
        [*command, "--config", str(config), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert f"{config}:2: bounce.language: unknown language 'klingon'" in lines[0]
    assert f"{config}:3: bounce.contact: 'nobody' is not a mail address" in lines[1]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
