"""The shipped systemd units are hardened: systemd-analyze security scores each <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parents[2] / "systemd").glob("*.service"))
ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_is_hardened(unit: Path) -> None:
    """systemd-analyze security --offline scores each unit at 2.0 or better."""
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    print(f"{unit.name}: exposure {match[1]}")
    assert float(match[1]) <= 2.0
