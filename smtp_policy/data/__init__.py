"""Load the knowledge base shipped in ``smtp_policy/data`` (the I/O side of core.knowledge).

The TOML files are the source of truth. Parsing them is most of the start-up of a short
command (``smtp-policy explain``), so the parsed tables are also kept, marshalled, in the data
directory's ``__pycache__``, as Python keeps compiled modules there. The copy is used only when
it was written from the same TOML bytes (their SHA-256) by the same Python, and only when it is
a regular file of this user or root that no one else may write; otherwise the TOML is parsed
and the copy written again, unless Python was told not to write bytecode
(``PYTHONDONTWRITEBYTECODE``, ``-B``), which this copy honours as Python's own caches do. It is
never needed: where the directory is read-only, every start parses the TOML.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import stat
import sys
import tomllib
from functools import cache
from typing import Any

from smtp_policy.core.errors import KnowledgeError
from smtp_policy.core.knowledge import KnowledgeBase

DATA_DIR = os.path.dirname(os.path.abspath(__file__))
#: The tables besides ``rules/*.toml``, as :meth:`KnowledgeBase.from_data` takes them.
TABLES = ("reasons.toml", "basic_codes.toml", "enhanced_codes.toml")
#: The parsed copy, in the data directory's ``__pycache__`` (one per Python version).
CACHE_NAME = f"knowledge.{sys.implementation.cache_tag}.marshal"
#: A larger file is not read as the parsed copy (the TOML is about 0.3 MB; its copy less).
MAX_CACHE_BYTES = 16 * 1024 * 1024


@cache
def default_knowledge() -> KnowledgeBase:
    """The shipped knowledge base, loaded and validated once per process."""
    tables = load_tables(DATA_DIR)
    return KnowledgeBase.from_data(
        reasons=tables["reasons.toml"],
        basic_codes=tables["basic_codes.toml"],
        enhanced_codes=tables["enhanced_codes.toml"],
        rule_files={
            name.removeprefix("rules/"): table
            for name, table in tables.items()
            if name.startswith("rules/")
        },
    )


def load_tables(directory: str) -> dict[str, dict[str, Any]]:
    """Every TOML file of the knowledge base in ``directory``, parsed, by its name relative to
    it (``rules/`` files in name order): from the parsed copy when it is of these very bytes."""
    sources = _sources(directory)
    digest = hashlib.sha256()
    for name, raw in sources.items():
        digest.update(b"%s\0%d\0" % (name.encode(), len(raw)))
        digest.update(raw)
    key = digest.digest()
    path = os.path.join(directory, "__pycache__", CACHE_NAME)
    tables = _read_copy(path, key)
    if tables is not None and tables.keys() == sources.keys():
        return tables
    tables = {name: _toml(raw, name) for name, raw in sources.items()}
    _write_copy(path, key, tables)
    return tables


def _sources(directory: str) -> dict[str, bytes]:
    names = [*TABLES]
    names += [
        f"rules/{entry}"
        for entry in sorted(os.listdir(os.path.join(directory, "rules")))
        if entry.endswith(".toml")
    ]
    out = {}
    for name in names:
        with open(os.path.join(directory, name), "rb") as fh:
            out[name] = fh.read()
    return out


def _read_copy(path: str, key: bytes) -> dict[str, dict[str, Any]] | None:
    """The tables in the parsed copy at ``path`` if it holds them for ``key`` and no one but
    this user or root could have written it; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid not in (0, os.geteuid())
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            or info.st_size > MAX_CACHE_BYTES
        ):
            return None
        data = fh.read(MAX_CACHE_BYTES + 1)
    try:
        stored_key, tables = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None
    if stored_key != key or not isinstance(tables, dict):
        return None
    if not all(isinstance(table, dict) for table in tables.values()):
        return None
    return tables


def _write_copy(path: str, key: bytes, tables: dict[str, dict[str, Any]]) -> None:
    """Write the parsed copy (replacing any other at once); where that cannot be done, or
    Python writes no bytecode, don't."""
    if sys.dont_write_bytecode:
        return
    try:
        payload = marshal.dumps((key, tables))
    except ValueError:  # a value marshal cannot hold (a TOML date): no copy
        return
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.replace(temporary, path)
        except OSError:
            os.unlink(temporary)
            raise
    except OSError:
        return


def _toml(raw: bytes, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KnowledgeError(where, "(file)", str(exc)) from None
