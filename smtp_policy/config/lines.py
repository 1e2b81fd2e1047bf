"""Where a TOML key is defined: ``find_line`` maps a key path to a 1-based line, best effort.

tomllib reports no positions for values, so the line is found by scanning the file's text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from smtp_policy.config.model import KeyPath

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED_KEY})\s*\]\]?\s*(?:#.*)?$")
_KEYLINE_RE = re.compile(rf"^\s*({_DOTTED_KEY})\s*=\s*(.*)$")
_PART_RE = re.compile(_KEY)


def find_line(text: str, path: Sequence[str | int]) -> int | None:
    """The 1-based line that defines ``path`` (or its nearest enclosing table), best effort.

    Array-of-tables elements are addressed by index: ``("rules", 2, "code")`` is the ``code``
    key after the third ``[[rules]]`` header. Lines inside multi-line strings are skipped.
    """
    target = tuple(path)
    best_len, best_line = 0, None
    table: KeyPath = ()
    arrays: dict[KeyPath, int] = {}
    closing: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if closing is not None:
            closing = None if closing in line else closing
            continue
        header = _HEADER_RE.match(line)
        if header:
            table = _resolve(_split_key(header.group(2)), arrays, header.group(1) == "[[")
            candidate = table
        else:
            keyline = _KEYLINE_RE.match(line)
            if keyline is None:
                continue
            candidate = (*table, *_split_key(keyline.group(1)))
            closing = _opens_multiline(keyline.group(2))
        if len(candidate) > best_len and target[: len(candidate)] == candidate:
            best_len, best_line = len(candidate), number
    return best_line


def _split_key(dotted: str) -> list[str]:
    parts = []
    for match in _PART_RE.finditer(dotted):
        raw = match.group(0)
        if raw.startswith('"'):
            try:
                parts.append(str(json.loads(raw)))
            except ValueError:
                parts.append(raw[1:-1])
        else:
            parts.append(raw.strip("'"))
    return parts


def _resolve(parts: list[str], arrays: dict[KeyPath, int], is_array: bool) -> KeyPath:
    out: KeyPath = ()
    for i, part in enumerate(parts):
        out = (*out, part)
        if is_array and i == len(parts) - 1:
            arrays[out] = arrays.get(out, -1) + 1
            out = (*out, arrays[out])
        elif out in arrays:
            out = (*out, arrays[out])
    return out


def _opens_multiline(value: str) -> str | None:
    for delim in ('"""', "'''"):
        if value.startswith(delim) and delim not in value[3:]:
            return delim
    return None
