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
    assert "your message could\nnot be delivered to one or more of its recipients" in expanded
    raw = subprocess.run(
        [POSTCONF, "-t", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert "Subject: Undelivered mail: your message could not be delivered" in raw
