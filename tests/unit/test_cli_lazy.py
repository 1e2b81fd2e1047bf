"""The dispatcher registers only the chosen subcommand, and that changes nothing it parses."""

from __future__ import annotations

import argparse

import pytest

from smtp_policy.cli import COMMANDS, build_parser, chosen_command


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_lone_subcommand_parser_is_the_full_one(name: str) -> None:
    full, lone = build_parser(), build_parser(name)
    assert _subparser(lone, name).format_help() == _subparser(full, name).format_help()
    assert lone.format_usage() == full.format_usage()


def test_only_the_chosen_subcommand_is_registered() -> None:
    parser = build_parser("explain")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert list(action.choices) == ["explain"]


@pytest.mark.parametrize(
    ("argv", "chosen"),
    [
        (["explain", "--jsonl"], "explain"),
        (["check-config"], "check-config"),
        ([], None),
        (["--help"], None),
        (["--version"], None),
        (["-h", "explain"], None),
        (["nonsense"], None),
    ],
)
def test_chosen_command(argv: list[str], chosen: str | None) -> None:
    assert chosen_command(argv) == chosen


def test_explain_parses_the_same_either_way() -> None:
    argv = ["explain", "--jsonl", "-"]
    assert build_parser("explain").parse_args(argv) == build_parser().parse_args(argv)
