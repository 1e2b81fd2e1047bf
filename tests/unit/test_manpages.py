"""The committed man pages are what the argparse definitions give, and they get installed."""

from __future__ import annotations

import tomllib
from pathlib import Path

from smtp_policy.cli import COMMANDS
from smtp_policy.commands._manpages import DEFAULT_DIR, render_pages

ROOT = Path(__file__).resolve().parents[2]
MAN_DIR = ROOT / DEFAULT_DIR


def test_committed_pages_match_the_parser() -> None:
    """Regenerate with: python -m smtp_policy.commands._manpages (from the repository root)."""
    pages = render_pages()
    committed = {p.name: p.read_text(encoding="utf-8") for p in MAN_DIR.glob("*.1")}
    assert sorted(committed) == sorted(pages), "python -m smtp_policy.commands._manpages"
    for name, text in pages.items():
        assert committed[name] == text, f"{name} drifted: python -m smtp_policy.commands._manpages"


def test_one_page_per_subcommand_and_one_for_the_command() -> None:
    pages = render_pages()
    assert set(pages) == {"smtp-policy.1"} | {f"smtp-policy-{name}.1" for name in COMMANDS}
    main = pages["smtp-policy.1"]
    for name in COMMANDS:
        assert f".BR smtp\\-policy\\-{name.replace('-', chr(92) + '-')} (1)" in main


def test_pages_name_every_option_of_their_command() -> None:
    milter = render_pages()["smtp-policy-milter.1"]
    assert '.TH "SMTP\\-POLICY\\-MILTER" "1"' in milter
    for option in ("--listen", "--events", "--config", "--timeout", "--noreply"):
        assert f"\\fB{option.replace('-', chr(92) + '-')}\\fR" in milter
    demo = render_pages()["smtp-policy-demo.1"]
    assert "\\fB\\-\\-explain\\-only\\fR" in demo


def test_roff_needs_no_more_escaping() -> None:
    """No line a roff reader would take as an unknown request, no raw backslash sequence."""
    for name, text in render_pages().items():
        for line in text.splitlines():
            if line.startswith((".", "'")):
                request = line[1:].split(" ", 1)[0]
                assert request in {"\\\"", "TH", "SH", "SS", "PP", "TP", "RS", "RE", "nf", "fi",
                                   "B", "BR", "I"}, (name, line)  # fmt: skip


def test_pyproject_installs_the_pages_under_share_man() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data_files = pyproject["tool"]["setuptools"]["data-files"]
    assert data_files["share/man/man1"] == [f"{DEFAULT_DIR.as_posix()}/*.1"]
