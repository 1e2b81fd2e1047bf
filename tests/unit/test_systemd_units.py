"""The shipped systemd units are well-formed and hardened (systemd-analyze security <= 2.0)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parents[2] / "systemd").glob("*.service"))
ANALYZE = shutil.which("systemd-analyze")


def test_one_unit_per_daemon() -> None:
    """milter, maps and follow each have a unit that runs `smtp-policy <daemon>` and reloads."""
    names = {u.stem for u in UNITS}
    assert {"smtp-policy-milter", "smtp-policy-maps", "smtp-policy-follow"} <= names
    for unit in UNITS:
        text = unit.read_text()
        daemon = unit.stem.removeprefix("smtp-policy-")
        assert re.search(rf"^ExecStart=\S*smtp-policy {daemon}\b", text, re.MULTILINE)
        for line in (
            "Restart=on-failure",
            "StateDirectory=smtp-policy",
            "User=smtp-policy",
            "ExecReload=/bin/kill -HUP $MAINPID",
        ):
            assert line in text, f"{unit.name} lacks {line}"


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
