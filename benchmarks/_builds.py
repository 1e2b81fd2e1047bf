"""How the benchmarks' child processes get the package's code: as an installed package has it
(with a bytecode cache), or with some modules compiled by mypyc (``--mypyc``).

A process started with ``PYTHONDONTWRITEBYTECODE`` set (as on some shared machines) compiles
every module from source at each start: :func:`with_bytecode` gives its children a bytecode
cache of their own in a temporary directory, as ``pip install`` would have written.

Issue 17's advice was to try mypyc on the pure modules before any other compiled core;
:func:`compiled_copy` makes that trial repeatable: it copies ``smtp_policy`` (the working
tree's files) into a directory of the caller's and compiles the named modules there with the
venv's ``mypyc``; running with ``PYTHONPATH`` set to that directory imports the compiled
modules. Nothing is installed and the package itself stays pure Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The log path: what ``follow`` and ``report`` spend their time in, per line.
LOG_MODULES = (
    "smtp_policy/maillog/_shapes.py",
    "smtp_policy/maillog/parse.py",
    "smtp_policy/maillog/postfix.py",
    "smtp_policy/maillog/sendmail.py",
    "smtp_policy/maillog/tracker.py",
    "smtp_policy/maillog/report.py",
    "smtp_policy/maillog/tally.py",
    "smtp_policy/adapters/follow/pipeline.py",
)
#: Classification: what ``explain --jsonl`` spends its time in, per reply (``knowledge`` and
#: ``sanitize`` use what mypyc refuses: an ``Any`` from ``Enum``'s call, surrogate literals).
EXPLAIN_MODULES = (
    "smtp_policy/core/parse.py",
    "smtp_policy/core/classify.py",
    "smtp_policy/core/explain.py",
    "smtp_policy/commands/explain.py",
)


def with_bytecode(cache: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for children that keep their bytecode in ``cache``."""
    out = {**(os.environ if env is None else env), "PYTHONPYCACHEPREFIX": str(cache)}
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    return out


def compiled_copy(modules: Sequence[str], into: Path) -> Path:
    """``into`` holding a copy of the package with ``modules`` compiled; exits if mypyc fails."""
    mypyc = Path(sys.executable).with_name("mypyc")
    if not mypyc.exists():
        sys.exit(f"--mypyc: {mypyc} not found (pip install mypy)")
    shutil.copytree(
        ROOT / "smtp_policy", into / "smtp_policy", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", into)  # mypy's settings
    started = time.perf_counter()
    proc = subprocess.run(
        [str(mypyc), *modules], cwd=into, capture_output=True, text=True, check=False
    )
    built = list(into.glob("smtp_policy/**/*.so"))
    if proc.returncode != 0 or len(built) < len(modules):
        sys.exit(f"--mypyc: compiling failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    print(f"mypyc: {len(modules)} modules compiled in {time.perf_counter() - started:.0f} s")
    return into
