"""The sans-I/O packages import nothing that does I/O, keeps time or logs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "smtp_policy"
PURE = ("core", "wire", "maillog")
FORBIDDEN = {
    "os",
    "io",
    "sys",
    "socket",
    "selectors",
    "asyncio",
    "threading",
    "multiprocessing",
    "subprocess",
    "time",
    "logging",
    "structlog",
    "Milter",
    "signal",
    "pathlib",
    "shutil",
    "tempfile",
    "random",
    "urllib",
    "http",
    "importlib",
    "builtins",
}
FORBIDDEN_NAMES = {"open", "print", "input", "exec", "eval", "__import__"}


def _pure_modules() -> list[Path]:
    return sorted(p for pkg in PURE for p in (PACKAGE / pkg).glob("*.py"))


def violations(source: str) -> list[str]:
    """What in ``source`` breaks the sans-I/O rule."""
    tree = ast.parse(source)
    bad: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] in FORBIDDEN or (
                parts[0] == "smtp_policy" and parts[1:2] != [] and parts[1] not in PURE
            ):
                bad.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
            if node.level >= 2 and node.module.split(".")[0] not in PURE:
                bad.append(f"{'.' * node.level}{node.module}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in FORBIDDEN_NAMES:
                bad.append(f"{node.func.id}()")
        elif isinstance(node, ast.Global):
            bad.append("global statement")
    return bad


@pytest.mark.parametrize("path", _pure_modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_module_imports_no_io(path: Path) -> None:
    """A core, wire or maillog module imports no I/O, clock, logging or MTA library."""
    assert violations(path.read_text(encoding="utf-8")) == []


def test_the_check_catches_an_impure_module() -> None:
    """The purity check is not vacuous: imports, adapters, open() and globals are flagged."""
    sample = (
        "import socket\nfrom time import monotonic\nfrom ..adapters import milter\n"
        "from smtp_policy.config import Config\n"
        "def f():\n    global X\n    return open('x')\n"
    )
    assert violations(sample) == [
        "socket",
        "time",
        "..adapters",
        "smtp_policy.config",
        "global statement",
        "open()",
    ]
