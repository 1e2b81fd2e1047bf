"""The parsed copy of the knowledge base's TOML: used only when it is of the same bytes."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from smtp_policy import data
from smtp_policy.data import CACHE_NAME, DATA_DIR, load_tables


@pytest.fixture(autouse=True)
def _bytecode_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests write the copy, as Python would unless told not to (PYTHONDONTWRITEBYTECODE)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A copy of the shipped TOML files, without any parsed copy."""
    target = tmp_path / "data"
    (target / "rules").mkdir(parents=True)
    for name in data.TABLES:
        shutil.copy(Path(DATA_DIR) / name, target / name)
    for rule_file in (Path(DATA_DIR) / "rules").glob("*.toml"):
        shutil.copy(rule_file, target / "rules" / rule_file.name)
    return target


def _parsed_now(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names the next loads parse from TOML (none when the copy serves them)."""
    parsed: list[str] = []
    real = data._toml

    def counting(raw: bytes, where: str) -> dict[str, Any]:
        parsed.append(where)
        return real(raw, where)

    monkeypatch.setattr(data, "_toml", counting)
    return parsed


def test_the_copy_holds_what_the_toml_says(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = _parsed_now(monkeypatch)
    first = load_tables(str(data_dir))
    assert (data_dir / "__pycache__" / CACHE_NAME).is_file()
    assert "reasons.toml" in parsed and any(n.startswith("rules/") for n in parsed)
    parsed.clear()
    again = load_tables(str(data_dir))
    assert parsed == []  # served by the copy
    assert again == first
    assert list(again) == list(first)  # rules in name order, as parsed


def test_an_edited_toml_file_is_parsed_again(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_tables(str(data_dir))
    reasons = data_dir / "reasons.toml"
    reasons.write_text(reasons.read_text() + "\n# edited\n")
    parsed = _parsed_now(monkeypatch)
    load_tables(str(data_dir))
    assert "reasons.toml" in parsed


@pytest.mark.parametrize(
    "spoil",
    [
        lambda p: p.write_bytes(b"not marshal data"),
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(p.read_bytes()[:1000]),
        lambda p: os.chmod(p, 0o666),  # others could have written it
    ],
    ids=["garbage", "empty", "truncated", "writable-by-others"],
)
def test_a_spoiled_copy_is_not_used(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, spoil: Any
) -> None:
    first = load_tables(str(data_dir))
    spoil(data_dir / "__pycache__" / CACHE_NAME)
    parsed = _parsed_now(monkeypatch)
    assert load_tables(str(data_dir)) == first
    assert "reasons.toml" in parsed


def test_a_symbolic_link_is_not_followed(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_tables(str(data_dir))
    copy = data_dir / "__pycache__" / CACHE_NAME
    copy.rename(data_dir / "elsewhere")
    copy.symlink_to(data_dir / "elsewhere")
    parsed = _parsed_now(monkeypatch)
    load_tables(str(data_dir))
    assert "reasons.toml" in parsed


def test_no_place_for_the_copy_is_no_problem(data_dir: Path) -> None:
    (data_dir / "__pycache__").write_text("a file where the directory would be")
    first = load_tables(str(data_dir))
    assert load_tables(str(data_dir)) == first
    assert (data_dir / "__pycache__").is_file()
    assert not list(data_dir.rglob("*.tmp"))


def test_the_shipped_knowledge_loads_the_same_from_the_copy() -> None:
    """What default_knowledge() gets (from the copy when there is one) is what TOML says."""
    tables = load_tables(DATA_DIR)
    for name, table in tables.items():
        assert table == data._toml((Path(DATA_DIR) / name).read_bytes(), name), name


def test_no_copy_is_written_when_python_writes_no_bytecode(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    first = load_tables(str(data_dir))
    assert load_tables(str(data_dir)) == first
    assert not (data_dir / "__pycache__" / CACHE_NAME).exists()
