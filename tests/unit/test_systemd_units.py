"""The shipped systemd units are well-formed and hardened (systemd-analyze security <= 2.0)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

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
