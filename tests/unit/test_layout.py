"""The package's top level holds only the entry points and the one EventWriter."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "smtp_policy"
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py", "emit.py"}
PARTS = {"core", "data", "wire", "maillog", "config", "adapters", "commands", "lab"}


def test_top_level_modules_are_only_the_entry_points() -> None:
    """Every other module lives in a part (docs/architecture.md)."""
    assert {p.name for p in PACKAGE.glob("*.py")} == TOP_LEVEL


def test_the_parts_are_packages() -> None:
    """Each part named in docs/architecture.md is a package, and there are no others."""
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == PARTS
