"""Man pages from the argparse definitions: ``smtp-policy(1)`` and one page per subcommand.

``python -m smtp_policy.commands._manpages [DIR]`` writes them to DIR (default ``man/man1``); the
committed pages are installed with the package under ``share/man/man1`` and a unit test fails
when they drift from the parser. Rendering depends on nothing but the parser (no terminal
width, no date), so the same code always gives the same bytes.

argparse-manpage documents a whole parser in one page, subcommands included; an admin expects
``man smtp-policy-milter``, so this small renderer walks ``smtp_policy.cli.build_parser()``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from smtp_policy.cli import build_parser

PROG = "smtp-policy"
SECTION = "1"
MANUAL = "smtp_policy manual"
DEFAULT_DIR = Path("man") / f"man{SECTION}"

MAIN_DESCRIPTION = """\
Record, explain and rewrite SMTP reply codes beside Postfix or Sendmail.

The daemons (milter, maps, policy, follow and proxy) each run as a systemd unit,
smtp-policy-NAME.service, grouped by smtp-policy.target. Their Postfix and Sendmail hooks fail
open: when one is down or slow, mail flows as it would without it. The proxy is the exception,
as it stands in the mail path: when it is down nothing answers on its port, and when the
Postfix behind it is down or refuses XCLIENT it answers 421 (clients retry later).
"""

FILES = (
    ("/etc/smtp-policy/config.toml", "the configuration (see config/config.toml for every key)"),
    ("/etc/smtp-policy/conf.d/*.toml", "read after it, in name order; later files win"),
)
EXIT_STATUS = (
    ("0", "success"),
    ("1", "an error, said in one line on standard error"),
    ("2", "wrong arguments (argparse's usage message)"),
    ("130", "interrupted (Ctrl-C)"),
)


def escape(text: str) -> str:
    """Text as roff reads it literally: backslashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def inline(text: str) -> str:
    """Escaped prose, with reST ``literals`` in bold and :role:`targets` kept as plain names."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    parts = re.split(r"``(.+?)``", text)
    return "".join(
        f"\\fB{escape(part)}\\fR" if i % 2 else escape(part) for i, part in enumerate(parts)
    )


def prose(doc: str) -> list[str]:
    """A docstring as roff: paragraphs filled, indented lines kept as they are."""
    out: list[str] = []
    literal = False
    indent = 0
    for block in re.split(r"\n\s*\n", doc.strip()):
        out.append(".PP")
        for line in block.splitlines():
            is_literal = line.startswith((" ", "\t"))
            if is_literal != literal:
                out.extend([".RS 4", ".nf"] if is_literal else [".fi", ".RE"])
                literal = is_literal
                indent = len(line) - len(line.lstrip())
            if is_literal:
                out.append(escape(line[min(indent, len(line) - len(line.lstrip())) :].rstrip()))
            else:
                out.append(inline(line.strip()))
        if literal:
            out.extend([".fi", ".RE"])
            literal = False
    return out


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(parser.prog)


def _arguments(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    """``METAVAR`` (with its nargs shape) as argparse prints it, in italics."""
    if action.nargs == 0:
        return ""
    default = action.dest.upper() if action.option_strings else action.dest
    args = formatter._format_args(action, default)
    return re.sub(r"([^\s\[\].]+)", r"\\fI\1\\fR", escape(args))


def _option_term(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    """``-o, --output FILE`` in bold and italics."""
    args = _arguments(action, formatter)
    if not action.option_strings:
        return args
    names = ", ".join(f"\\fB{escape(name)}\\fR" for name in action.option_strings)
    return f"{names} {args}".rstrip()


def _help(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    """The help text with %(default)s and friends filled in."""
    if not action.help:
        return ""
    text = formatter._expand_help(action)
    if action.choices is not None and action.metavar is not None:  # else the metavar shows them
        choices = ", ".join(str(c) for c in action.choices)
        if choices not in text:
            text = f"{text} (one of: {choices})"
    return inline(" ".join(text.split()))


def _visible(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if action.help != argparse.SUPPRESS:
            yield action


def _synopsis(parser: argparse.ArgumentParser, name: str) -> list[str]:
    """``.B smtp-policy milter`` and each argument, optional ones in brackets."""
    formatter = _formatter(parser)
    words = []
    for action in _visible(parser):
        if isinstance(action, argparse._SubParsersAction):
            words.append("\\fICOMMAND\\fR [\\fIARGS\\fR]")
            continue
        if not action.option_strings:
            words.append(_arguments(action, formatter))
            continue
        term = f"\\fB{escape(action.option_strings[-1])}\\fR {_arguments(action, formatter)}"
        words.append(f"[{term.rstrip()}]")
    return [".SH SYNOPSIS", f".B {escape(name)}", *words]


def _options(parser: argparse.ArgumentParser, *, nested: bool = False) -> list[str]:
    formatter = _formatter(parser)
    positional = [
        a
        for a in _visible(parser)
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]
    optional = [a for a in _visible(parser) if a.option_strings]
    out: list[str] = []
    for title, actions in (("ARGUMENTS", positional), ("OPTIONS", optional)):
        if not actions:
            continue
        out.extend([".PP", f"{title.capitalize()}:"] if nested else [f".SH {title}"])
        for action in actions:
            out.extend([".TP", _option_term(action, formatter), _help(action, formatter)])
    return out


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in ``--help`` order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _header(name: str, summary: str) -> list[str]:
    title = name.upper()
    return [
        '.\\" Generated from the argparse definitions by smtp_policy/commands/_manpages.py.',
        '.\\" Do not edit: change the parser or the docstring, then run',
        '.\\" python -m smtp_policy.commands._manpages',
        f'.TH "{escape(title)}" "{SECTION}" "" "{PROG}" "{MANUAL}"',
        ".SH NAME",
        f"{escape(name)} \\- {inline(summary)}",
    ]


def _table(heading: str, rows: tuple[tuple[str, str], ...]) -> list[str]:
    out = [f".SH {heading}"]
    for term, text in rows:
        out.extend([".TP", f"\\fB{escape(term)}\\fR", inline(text)])
    return out


def _see_also(names: list[str]) -> list[str]:
    refs = ",\n".join(f".BR {escape(n)} ({SECTION})" for n in names)
    return [".SH SEE ALSO", *refs.splitlines()]


def command_page(name: str, summary: str, parser: argparse.ArgumentParser) -> str:
    """The page of one subcommand (``smtp-policy-NAME``), nested subcommands included."""
    page = _header(f"{PROG}-{name}", summary)
    page += _synopsis(parser, f"{PROG} {name}")
    page += [".SH DESCRIPTION", *prose(parser.description or summary)]
    page += _options(parser)
    nested = _subcommands(parser)
    if nested:
        page.append(".SH COMMANDS")
        for sub_name, sub_help, sub in nested:
            page += [f'.SS "{escape(f"{PROG} {name} {sub_name}")}"', inline(sub_help), ".PP"]
            page += _synopsis(sub, f"{PROG} {name} {sub_name}")[1:]
            page += _options(sub, nested=True)
    page += _table("FILES", FILES)
    page += _table("EXIT STATUS", EXIT_STATUS)
    page += _see_also([PROG])
    return "\n".join(page) + "\n"


def main_page(parser: argparse.ArgumentParser) -> str:
    """``smtp-policy(1)``: the command, its options and its subcommands."""
    commands = _subcommands(parser)
    page = _header(PROG, parser.description or "")
    page += _synopsis(parser, PROG)
    page += [".SH DESCRIPTION", *prose(MAIN_DESCRIPTION)]
    page += [".PP", f"Each command has its own page, \\fB{PROG}\\-\\fR\\fICOMMAND\\fR(1)."]
    page += _options(parser)
    page.append(".SH COMMANDS")
    for name, summary, _ in commands:
        page += [".TP", f"\\fB{escape(name)}\\fR", inline(summary)]
    page += _table("FILES", FILES)
    page += _table("EXIT STATUS", EXIT_STATUS)
    page += _see_also([f"{PROG}-{name}" for name, _, _ in commands])
    return "\n".join(page) + "\n"


def render_pages(parser: argparse.ArgumentParser | None = None) -> dict[str, str]:
    """File name -> page text, for ``smtp-policy`` and every subcommand."""
    parser = parser or build_parser()
    pages = {f"{PROG}.{SECTION}": main_page(parser)}
    for name, summary, sub in _subcommands(parser):
        pages[f"{PROG}-{name}.{SECTION}"] = command_page(name, summary, sub)
    return pages


def write_pages(directory: Path) -> list[Path]:
    """Write every page into ``directory``, remove pages of commands that are gone."""
    directory.mkdir(parents=True, exist_ok=True)
    pages = render_pages()
    for stale in directory.glob(f"{PROG}*.{SECTION}"):
        if stale.name not in pages:
            stale.unlink()
    written = []
    for file_name, text in pages.items():
        path = directory / file_name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Write the pages to the directory given (default ``man/man1``)."""
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else DEFAULT_DIR
    for path in write_pages(directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
