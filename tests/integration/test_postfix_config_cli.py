"""`smtp-policy postfix-config --print-snippet` prints main.cf lines Postfix's own postconf accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"


@pytest.mark.skipif(not Path(POSTCONF).exists(), reason="postfix is not installed")
def test_postconf_reads_the_lines(tmp_path: Path) -> None:
    """Appended to a main.cf, every printed setting is read back by postconf unchanged."""
    config = Path(__file__).resolve().parents[2] / "config" / "config.toml"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "smtp_policy",
            "postfix-config",
            "--config",
            str(config),
            "--with-policy",
            "--print-snippet",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "main.cf").write_text(out)
    (tmp_path / "master.cf").write_text("")
    got = subprocess.run(
        [POSTCONF, "-c", str(tmp_path), "-n"], capture_output=True, text=True, check=True
    )
    assert "warning" not in got.stderr
    values = dict(line.split(" = ", 1) for line in got.stdout.splitlines())
    assert values["smtpd_milters"].startswith(
        "{ unix:smtp-policy/milter.sock, default_action=accept"
    )
    assert values["smtpd_reject_footer_maps"] == "socketmap:inet:127.0.0.1:8896:footer"
    assert values["smtp_delivery_status_filter"] == "socketmap:inet:127.0.0.1:8896:dsn"
    assert values["smtpd_banner"].startswith("$myhostname ESMTP")
    assert "default_action=DUNNO" in values["smtpd_recipient_restrictions"]
