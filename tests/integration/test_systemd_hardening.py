"""The shipped systemd units are hardened and valid: systemd-analyze security scores each <= 2.0
and systemd-analyze verify finds nothing to say but that /usr/local/bin/smtp-policy is not
installed here.

systemd-analyze comes with the systemd package (scripts/install-deps installs it). Without it
the tests skip, and fail instead under REQUIRE_POSTFIX=1 (CI), like the Postfix tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
DAEMONS = ("milter", "maps", "policy", "follow", "proxy")
MAX_EXPOSURE = 2.0


@pytest.fixture(name="analyze")
def _analyze() -> str:
    """The path of systemd-analyze; skip without it, or fail under REQUIRE_POSTFIX."""
    path = shutil.which("systemd-analyze")
    if path is not None:
        return path
    reason = "systemd-analyze is missing (scripts/install-deps installs the systemd package)"
    if os.environ.get("REQUIRE_POSTFIX"):
        pytest.fail(f"REQUIRE_POSTFIX is set but {reason}")
    pytest.skip(reason)


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_is_hardened(daemon: str, analyze: str, capsys: pytest.CaptureFixture[str]) -> None:
    """systemd-analyze security --offline scores each unit at 2.0 or better."""
    unit = SYSTEMD / f"smtp-policy-{daemon}.service"
    assert unit.exists(), f"{unit.name} is missing"
    proc = subprocess.run(
        [analyze, "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    with capsys.disabled():
        print(f"\n{unit.name}: exposure {match[1]} (at most {MAX_EXPOSURE})")
    assert float(match[1]) <= MAX_EXPOSURE, proc.stdout


def test_units_verify(analyze: str) -> None:
    """systemd-analyze verify knows every key and value of every unit and of the target."""
    units = [*sorted(SYSTEMD.glob("*.service")), SYSTEMD / "smtp-policy.target"]
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    complaints = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and "/usr/local/bin/smtp-policy is not executable" not in line
    ]
    assert not complaints, "\n".join(complaints)
