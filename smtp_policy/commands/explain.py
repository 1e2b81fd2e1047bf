"""Explain SMTP replies: what they mean, why they happened, who must act and what to do.

Give the reply as arguments (its words are joined with spaces), or on standard input. With
--jsonl, read JSON Lines (each a JSON string or an object with "reply") and write exactly one
JSON object per input line, in order; a bad line gets an object with "error".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import IO

from smtp_policy.core.explain import explain_text, render_explanation
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.data import default_knowledge

HELP = "explain an SMTP reply (or a JSON Lines stream of them)"

#: A reply longer than this is explained from its first part only (parse bounds it too).
MAX_INPUT_CHARS = 1_048_576


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
            _explain_stream(sys.stdin.buffer, sys.stdout, kb)
        else:
            try:
                with open(args.jsonl, "rb") as fh:
                    _explain_stream(fh, sys.stdout, kb)
            except OSError as exc:
                print(
                    f"smtp-policy explain: cannot read {args.jsonl}: {exc.strerror}",
                    file=sys.stderr,
                )
                return 2
        return 0
    text = (
        " ".join(args.text)
        if args.text
        else sys.stdin.buffer.read(MAX_INPUT_CHARS).decode("utf-8", "replace")
    )
    explanation = explain_text(text, kb)
    if args.json:
        print(json.dumps(explanation.to_dict(), ensure_ascii=False))
    else:
        print(render_explanation(explanation))
    return 0


def raise_usage(message: str) -> None:
    """Stop with a usage error (exit 2), as argparse does."""
    print(f"smtp-policy explain: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def explain_lines(lines: Iterable[bytes], kb: KnowledgeBase) -> Iterator[dict[str, object]]:
    """One result object per input line; never raises for a bad line."""
    for number, raw in enumerate(lines, start=1):
        line = raw.decode("utf-8", "replace").strip()
        try:
            reply = _reply_of(line)
        except ValueError as exc:
            yield {"line": number, "reply": None, "error": str(exc)}
            continue
        yield explain_text(reply[:MAX_INPUT_CHARS], kb).to_dict()


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


def _explain_stream(src: IO[bytes], out: IO[str], kb: KnowledgeBase) -> None:
    for obj in explain_lines(src, kb):
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        out.flush()
