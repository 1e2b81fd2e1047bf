"""tests/unit starts no process: every way to start one fails the test that tries.

Tests that run a command, a daemon or a tool (postconf, postmap, openssl, systemd-analyze)
belong in tests/integration.
"""

from __future__ import annotations

import _posixsubprocess  # CPython's fork+exec, under Popen
import os
import subprocess
from typing import Any, NoReturn

import pytest

#: The functions of ``os`` that start a process (exec* replaces this one, and is left alone).
_OS_STARTERS = (
    *("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "popen"),
    *("spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe"),
)

RULE = "tests/unit starts no process: move this test to tests/integration"


def _refuse(*args: Any, **kwargs: Any) -> NoReturn:
    """Stand in for whatever starts a process."""
    raise AssertionError(f"{RULE} (it tried to start {args[0] if args else 'a process'!r})")


class _RefusedPopen(subprocess.Popen[Any]):
    """``subprocess.Popen`` that refuses; still a class, so annotations and isinstance work."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _refuse(*args, **kwargs)


@pytest.fixture(autouse=True)
def _no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make subprocess (asyncio's subprocesses too), fork, spawn and os.system fail loudly."""
    monkeypatch.setattr(subprocess, "Popen", _RefusedPopen)
    monkeypatch.setattr(subprocess, "_fork_exec", _refuse, raising=False)
    monkeypatch.setattr(_posixsubprocess, "fork_exec", _refuse)
    for name in _OS_STARTERS:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse)
