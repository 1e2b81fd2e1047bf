"""The one wait helper: ``smtp_policy.lab.instance.poll``."""

from __future__ import annotations

import pytest

from smtp_policy.lab.instance import WaitTimeoutError, poll


def test_poll_returns_the_first_non_none_result() -> None:
    calls = iter([None, None, 0, 1])
    assert poll(lambda: next(calls), 5, lambda: "zero", interval=0) == 0


def test_poll_times_out_naming_what_it_waited_for() -> None:
    with pytest.raises(WaitTimeoutError, match=r"timed out after 0\.1s waiting for nothing"):
        poll(lambda: None, 0.1, lambda: "nothing", interval=0.01)


def test_poll_gives_up_once_unless_holds() -> None:
    calls: list[int] = []

    def probe() -> None:
        calls.append(1)

    with pytest.raises(AssertionError, match="gave up waiting for the end") as failure:
        poll(probe, 60, lambda: "the end", unless=lambda: len(calls) >= 3)
    assert failure.type is AssertionError  # not a timeout
    assert len(calls) == 4  # the probe is tried once more after ``unless`` held


def test_poll_takes_a_result_that_came_as_unless_began_to_hold() -> None:
    results = iter([None, "late"])
    assert poll(lambda: next(results), 60, lambda: "late", unless=lambda: True) == "late"
