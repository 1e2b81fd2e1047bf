"""The shipped example config/config.toml: safe as copied, every example valid when uncommented.

Example lines are comment lines with no space after the "#" ("#key = value", "#[[rules]]");
prose comments have one ("# text"). Uncommenting removes that "#".
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from smtp_policy.config import (
    BannerConfig,
    ConfigReport,
    ConfigSource,
    check_config,
    check_sources,
    default_source,
    load_config,
)
from smtp_policy.config.advice import advise, example_domains
from smtp_policy.core.model import Reason
from smtp_policy.core.policy import RuleAction
from smtp_policy.core.texts import PLACEHOLDERS
from smtp_policy.data import default_knowledge

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "config.toml"
_EXAMPLE_LINE = re.compile(r"#(?=\S)")


def uncomment(lines: list[str], wanted: range | None = None) -> str:
    """The text with the example lines (all, or those whose index is in ``wanted``) made live."""
    out = [
        line[1:] if _EXAMPLE_LINE.match(line) and (wanted is None or i in wanted) else line
        for i, line in enumerate(lines)
    ]
    return "\n".join(out) + "\n"


def example_blocks(lines: list[str]) -> list[range]:
    """Each run of consecutive example lines, as a range of line indexes."""
    blocks: list[range] = []
    start = None
    for i, line in enumerate([*lines, ""]):
        if _EXAMPLE_LINE.match(line):
            start = i if start is None else start
        elif start is not None:
            blocks.append(range(start, i))
            start = None
    return blocks


def checked(text: str, monkeypatch: pytest.MonkeyPatch) -> ConfigReport:
    """The defaults plus ``text`` as config.toml, write access granted (it depends on the host)."""
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    return check_sources([default_source(), ConfigSource("config.toml", text)])


EXAMPLE_LINES = EXAMPLE.read_text(encoding="utf-8").splitlines()
BLOCKS = example_blocks(EXAMPLE_LINES)


def test_the_example_as_shipped_is_the_shipped_defaults(tmp_path: Path) -> None:
    """Copied to /etc as it is, the example changes nothing: no rules, help link or banner."""
    config = load_config(EXAMPLE)
    assert config.files == (EXAMPLE,)
    assert replace(config, files=()) == load_config(etc_dir=tmp_path)
    assert config.rules == ()
    assert config.texts.help_url == ""
    assert config.banner == BannerConfig()
    assert not config.follow.enabled
    assert config.metrics.listen is None
    assert check_config(EXAMPLE).warnings == []


def test_the_example_has_examples_to_uncomment() -> None:
    """Enough blocks to document every section (a guard for the block finder itself)."""
    assert len(BLOCKS) >= 20
    assert all(EXAMPLE_LINES[b.start].startswith("#") for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"line{b.start + 1}")
def test_each_example_block_uncommented_is_valid(
    block: range, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any one example, uncommented where it stands, loads; only example domains warn."""
    report = checked(uncomment(EXAMPLE_LINES, block), monkeypatch)
    assert report.problems == []
    assert all("an example domain (RFC 2606)" in w for w in report.warnings), report.warnings


def test_every_example_uncommented_is_valid_and_covers_every_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All examples at once load; they show every key of the defaults and of a rule."""
    text = uncomment(EXAMPLE_LINES)
    report = checked(text, monkeypatch)
    assert report.problems == []
    assert len(report.warnings) == 1  # the placeholder help link, to be replaced
    assert re.fullmatch(
        r"config\.toml:\d+: texts\.help_url: help\.example\.com: an example domain .*",
        report.warnings[0],
    )
    config = report.config
    assert config is not None
    assert config.follow.enabled
    assert config.metrics.listen
    assert config.texts.help_url
    assert config.texts.reason[Reason.USER_UNKNOWN].internal
    assert config.texts.reason[Reason.USER_UNKNOWN].lang["de"].external
    (first, *_) = config.rules
    assert first.action is RuleAction.REJECT and first.sender and first.text
    assert first.text.count("\n") >= 2  # a multi-line friendly reply
    example = tomllib.loads(text)
    defaults = tomllib.loads(default_source().text)
    for section, table in defaults.items():
        assert set(table) <= set(example[section]), section
    rule_keys = set().union(*(set(rule) for rule in example["rules"]))
    assert rule_keys >= {
        "name", "stage", "client_network", "sender", "recipient", "helo", "size_over",
        "authenticated", "action", "code", "enhanced", "reason", "text",
    }  # fmt: skip


def test_the_example_documents_every_placeholder_and_hook() -> None:
    """The table of which hook fills which placeholder is in the example's comments."""
    text = EXAMPLE.read_text(encoding="utf-8")
    assert all(f"{{{name}}}" in text for name in PLACEHOLDERS)
    for hook in ("reject footer", "DSN text", "milter reply", "policy reply", "proxy reply"):
        assert hook in text


# --- what a client or bounce recipient reads by default --------------------------------------


def test_the_shipped_defaults_name_no_example_domain() -> None:
    """No example.com/.org/.net in the default texts, help link, banner or bounce texts."""
    source = default_source()
    data = tomllib.loads(source.text)
    data.pop("rules", None)
    assert advise(data, []) == []
    assert example_domains(source.text) == []
    for language in sorted((ROOT / "smtp_policy" / "data" / "i18n").glob("*.toml")):
        assert example_domains(language.read_text(encoding="utf-8")) == [], language.name


def test_the_knowledge_names_no_example_domain_in_what_it_says() -> None:
    """Summaries, explanations, actions and help links of reasons and rules (samples aside)."""
    kb = default_knowledge()
    said = [
        text
        for info in kb.reasons.values()
        for text in (info.summary, info.explanation, info.action, info.transient_action)
    ]
    said += [text for rule in kb.rules for text in (rule.help_url, rule.summary, rule.action)]
    assert [text for text in said if text and example_domains(text)] == []
