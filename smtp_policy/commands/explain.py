"""Explain SMTP replies: what they mean, why they happened, who must act and what to do.

Give the reply as arguments (its words are joined with spaces), or on standard input. Standard
input may hold several replies: each line that starts with a 3-digit code (followed by a space
or nothing) starts a new one, unless it continues a multi-line reply (NNN- lines and their
final NNN line), and a blank line ends one. Each reply gets its own answer; with --json, one
JSON object per line. The text answer is wrapped to the terminal's width (100 columns when
not on a terminal) and has bold labels on a terminal unless NO_COLOR is set; control
characters in it are shown escaped (``\\x1b``). No reply at all
is a usage error (exit 2). With --jsonl, read JSON Lines (each a JSON string or an object with
"reply") and write exactly one JSON object per input line, in order; a bad line gets an object
with "error".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import IO

from smtp_policy.core.explain import explain_text, explanation_json, render_explanation
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.sanitize import json_text
from smtp_policy.data import default_knowledge

HELP = "explain an SMTP reply (or a JSON Lines stream of them)"

#: A reply longer than this is explained from its first part only (parse bounds it too).
MAX_INPUT_CHARS = 1_048_576
#: How many distinct input lines --jsonl remembers the answer of.
LINE_CACHE_SIZE = 16_384
#: The text answer's width: the terminal's, kept within these bounds; 100 off a terminal.
MIN_WIDTH, MAX_WIDTH, PIPE_WIDTH = 40, 120, 100

#: A line that starts a reply: a 3-digit code, then a space, a dash or nothing.
_CODE_LINE = re.compile(r"(\d{3})([ -]|$)")


def register(parser: argparse.ArgumentParser) -> None:
    """Add the explain options."""
    parser.add_argument(
        "text", nargs="*", metavar="TEXT", help="the reply; words are joined with spaces"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print one JSON object")
    mode.add_argument(
        "--jsonl",
        nargs="?",
        const="-",
        metavar="FILE",
        help="read JSON Lines from FILE (or - for stdin), write one JSON object per line",
    )


def run(args: argparse.Namespace) -> int:
    """Explain, and print."""
    kb = default_knowledge()
    if args.jsonl is not None:
        if args.text:
            raise_usage("--jsonl takes a file, not reply text")
        if args.jsonl == "-":
            _explain_stream(sys.stdin.buffer, sys.stdout, kb, flush=True)
        else:
            try:
                with open(args.jsonl, "rb") as fh:
                    _explain_stream(fh, sys.stdout, kb, flush=False)
            except OSError as exc:
                print(
                    f"smtp-policy explain: cannot read {args.jsonl}: {exc.strerror}",
                    file=sys.stderr,
                )
                return 2
        return 0
    if args.text:
        replies = [" ".join(args.text).strip()]
    else:
        text = sys.stdin.buffer.read(MAX_INPUT_CHARS).decode("utf-8", "replace")
        replies = split_replies(text)
        if len(replies) == 1:
            replies = [text]  # one reply is explained as it came, line endings and all
    if not any(replies):
        raise_usage("no reply given: pass it as arguments or on standard input")
    explanations = [explain_text(reply, kb) for reply in replies]
    if args.json:
        for explanation in explanations:
            print(json_text(explanation.to_dict()))
        return 0
    tty = sys.stdout.isatty()
    width = text_width(tty, shutil.get_terminal_size((PIPE_WIDTH, 24)).columns)
    colour = use_colour(tty, os.environ.get("NO_COLOR"))
    blocks = [render_explanation(e, width=width, colour=colour) for e in explanations]
    print("\n\n".join(blocks))
    return 0


def text_width(isatty: bool, columns: int) -> int:
    """The width to wrap at: the terminal's ``columns`` within bounds, or 100 off a terminal."""
    if not isatty or columns <= 0:
        return PIPE_WIDTH
    return max(MIN_WIDTH, min(MAX_WIDTH, columns))


def use_colour(isatty: bool, no_color: str | None) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set to anything but ""."""
    return isatty and not no_color


def split_replies(text: str) -> list[str]:
    """The replies in ``text``, one string each (their lines joined with ``\\n``).

    A line starting with a 3-digit code starts a new reply unless the line before was a
    ``NNN-`` continuation of the same code; a blank line ends a reply; any other line
    continues the reply before it.
    """
    replies: list[list[str]] = []
    current: list[str] | None = None
    continued: str | None = None  # the code of a NNN- line just read
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            current, continued = None, None
            continue
        match = _CODE_LINE.match(line)
        if current is None or (match is not None and match.group(1) != continued):
            current = []
            replies.append(current)
        current.append(line)
        continued = match.group(1) if match is not None and match.group(2) == "-" else None
    return ["\n".join(lines) for lines in replies]


def raise_usage(message: str) -> None:
    """Stop with a usage error (exit 2), as argparse does."""
    print(f"smtp-policy explain: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def explain_lines(lines: Iterable[bytes], kb: KnowledgeBase) -> Iterator[str]:
    """One JSON text per input line, in order; never raises for a bad line.

    A line met before is answered from a bounded cache of the JSON text it got, keyed by its
    bytes: the answer depends on the line alone (a bad line's also names its number, so it
    is not cached).
    """

    @lru_cache(maxsize=LINE_CACHE_SIZE)
    def answer(raw: bytes) -> str | None:
        try:
            reply = _reply_of(raw.decode("utf-8", "replace").strip())
        except ValueError:
            return None
        return explanation_json(explain_text(reply[:MAX_INPUT_CHARS], kb))

    for number, raw in enumerate(lines, start=1):
        text = answer(raw)
        yield text if text is not None else _error_text(number, raw)


def _error_text(number: int, raw: bytes) -> str:
    """The answer to a line that holds no reply: its number and what is wrong with it."""
    line = raw.decode("utf-8", "replace").strip()
    try:
        _reply_of(line)
    except ValueError as exc:
        return json_text({"line": number, "reply": None, "error": str(exc)})
    raise AssertionError("a line that holds a reply has an answer")


def _reply_of(line: str) -> str:
    if not line:
        raise ValueError('empty line: expected a JSON string or an object with "reply"')
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise ValueError('not JSON: expected a JSON string or an object with "reply"') from None
    if isinstance(value, dict):
        value = value.get("reply")
        if not isinstance(value, str):
            raise ValueError('the object has no string "reply"')
    if not isinstance(value, str):
        raise ValueError('expected a JSON string or an object with "reply"')
    return value


def _explain_stream(src: IO[bytes], out: IO[str], kb: KnowledgeBase, *, flush: bool) -> None:
    """Write one line per input line; with ``flush``, each as soon as it is known (a live
    stream on standard input), else in large buffered writes (a file)."""
    for text in explain_lines(src, kb):
        out.write(text + "\n")
        if flush:
            out.flush()
    out.flush()
