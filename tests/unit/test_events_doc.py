"""docs/events.md says what the event schema is: fields, version, kinds and real examples."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtp_policy.core.events import FIELD_NAMES, SCHEMA_VERSION, EventKind

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
#: The kinds the milter writes; every one must be documented.
MILTER_KINDS = {"stage", "reply", "session", "error", "started", "stopped", "reloaded"}

_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|")
_FENCE = re.compile(r"^```json\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass
class Kind:
    """One ``### <kind>`` section (``### reply (source=proxy)`` for one source's variant of a
    kind): its extra-field table and its JSON examples."""

    title: str
    extras: set[str] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The ``event`` value: the heading's first word."""
        return self.title.split()[0]


def sections(text: str, level: str) -> dict[str, str]:
    """Heading text -> body, for headings of exactly ``level`` (``"## "``, ``"### "``)."""
    parts = re.split(rf"^{re.escape(level)}(.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def table_names(body: str) -> list[str]:
    """The backquoted names in the first column of a markdown table."""
    return [m.group(1) for line in body.splitlines() if (m := _ROW.match(line))]


@pytest.fixture(name="doc", scope="module")
def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(name="kinds", scope="module")
def _kinds(doc: str) -> dict[str, Kind]:
    body = sections(doc, "## ")["Event kinds"]
    return {
        title: Kind(title, set(table_names(text)), _FENCE.findall(text))
        for title, text in sections(body, "### ").items()
    }


def test_version_matches(doc: str) -> None:
    (version,) = re.findall(r"^Schema version: `(\d+)`", doc, flags=re.MULTILINE)
    assert int(version) == SCHEMA_VERSION


def test_field_list_is_the_schema(doc: str) -> None:
    """The ``## Fields`` table lists exactly ``core.events.FIELD_NAMES``, once each."""
    names = table_names(sections(doc, "## ")["Fields"])
    assert len(names) == len(set(names))
    assert set(names) == FIELD_NAMES


def test_milter_kinds_are_documented(kinds: dict[str, Kind]) -> None:
    assert {kind.name for kind in kinds.values()} >= MILTER_KINDS


def test_every_event_kind_is_documented(kinds: dict[str, Kind]) -> None:
    """Each :class:`EventKind` the code writes has a section, and each section is a kind."""
    documented = {kind.name for kind in kinds.values()}
    missing = {k.value for k in EventKind} - documented
    assert not missing, f"docs/events.md has no ### section for {sorted(missing)}"
    unknown = documented - {k.value for k in EventKind}
    assert not unknown, f"docs/events.md documents kinds the code never writes: {sorted(unknown)}"


def test_every_kind_has_an_example(kinds: dict[str, Kind]) -> None:
    for kind in kinds.values():
        assert kind.examples, f"### {kind.title} has no ```json example"


def test_examples_are_valid_and_documented(kinds: dict[str, Kind]) -> None:
    """Each example is JSON of its kind, as events are written: the four fields every event has,
    no schema field that is null (they are left out), and only documented extras."""
    for kind in kinds.values():
        assert not kind.extras & FIELD_NAMES, f"{kind.title}: an extra shadows a field"
        for example in kind.examples:
            event = json.loads(example)
            assert event["event"] == kind.name
            assert event["schema"] == SCHEMA_VERSION
            assert {"schema", "event", "source", "ts"} <= set(event), kind.title
            nulls = {k for k in FIELD_NAMES & set(event) if event[k] is None}
            assert not nulls, f"{kind.title}: null fields are left out, not written: {nulls}"
            undocumented = set(event) - FIELD_NAMES - kind.extras
            assert not undocumented, f"### {kind.title}: undocumented keys {undocumented}"
