"""The rule of tests/unit, enforced by its conftest: starting a process fails the test."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.unit.conftest import RULE


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(lambda: subprocess.run([sys.executable, "-c", "pass"], check=False), id="run"),
        pytest.param(lambda: subprocess.Popen(["true"]), id="Popen"),
        pytest.param(lambda: subprocess.check_output(["true"]), id="check_output"),
        pytest.param(lambda: os.system("true"), id="os.system"),
        pytest.param(lambda: os.popen("true"), id="os.popen"),
        # os.fork is looked up at call time, after the guard replaced it: the lambda is needed.
        pytest.param(lambda: os.fork(), id="os.fork"),  # noqa: PLW0108
        pytest.param(lambda: os.posix_spawn("/bin/true", ["true"], {}), id="os.posix_spawn"),
        pytest.param(lambda: os.spawnv(os.P_WAIT, "/bin/true", ["true"]), id="os.spawnv"),
        pytest.param(
            lambda: asyncio.run(asyncio.create_subprocess_exec("true")),
            id="asyncio.create_subprocess_exec",
        ),
    ],
)
def test_starting_a_process_fails_naming_the_rule(start: Callable[[], object]) -> None:
    """Every way to start a process raises an AssertionError that names the rule."""
    with pytest.raises(AssertionError, match=RULE):
        start()


def test_popen_stays_a_class_for_annotations_and_isinstance() -> None:
    """Code that names ``subprocess.Popen[bytes]`` or checks isinstance still works."""
    assert isinstance(subprocess.Popen[bytes], object)
    assert not isinstance(object(), subprocess.Popen)
