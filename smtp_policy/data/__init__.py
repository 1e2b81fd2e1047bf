"""Load the knowledge base shipped in ``smtp_policy/data`` (the I/O side of core.knowledge)."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from typing import Any

from smtp_policy.core.errors import KnowledgeError
from smtp_policy.core.knowledge import KnowledgeBase


@cache
def default_knowledge() -> KnowledgeBase:
    """The shipped knowledge base, loaded and validated once per process."""
    data = resources.files("smtp_policy") / "data"
    rules = {
        entry.name: _toml(entry.read_bytes(), f"rules/{entry.name}")
        for entry in sorted((data / "rules").iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".toml")
    }
    return KnowledgeBase.from_data(
        reasons=_toml((data / "reasons.toml").read_bytes(), "reasons.toml"),
        basic_codes=_toml((data / "basic_codes.toml").read_bytes(), "basic_codes.toml"),
        enhanced_codes=_toml((data / "enhanced_codes.toml").read_bytes(), "enhanced_codes.toml"),
        rule_files=rules,
    )


def _toml(raw: bytes, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KnowledgeError(where, "(file)", str(exc)) from None
