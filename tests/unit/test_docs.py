"""The documentation says what the code does."""

from __future__ import annotations

from pathlib import Path

from smtp_policy.core.model import Reason
from smtp_policy.data import default_knowledge

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_reason_is_documented_in_one_sentence() -> None:
    """docs/reasons.md has one row per reason, with the description from reasons.toml."""
    kb = default_knowledge()
    rows = [
        line for line in (DOCS / "reasons.md").read_text().splitlines() if line.startswith("| `")
    ]
    documented = {row.split("`")[1]: row for row in rows}
    assert set(documented) == {r.value for r in Reason}
    for reason, info in kb.reasons.items():
        assert info.description in documented[reason.value]
