"""Fixtures for tests that run a real private Postfix (the library is postfix.py) or a real
private Sendmail (sendmail.py) on loopback.

Skipping is deliberately narrow: a test is skipped only when ``/usr/sbin/postfix`` is missing
or the run is not root, and ``REQUIRE_POSTFIX=1`` turns even that into a failure (set it in CI).
Once Postfix is there and we are root, a Postfix that fails to start fails the test. Sendmail
likewise: skipped when not root or when its .debs are neither cached nor downloadable, a
failure instead under ``REQUIRE_SENDMAIL=1``. ``SMTP_POLICY_SENDMAIL_NO_NAMESPACES=1`` runs the
Sendmail tests on the lab's fallback path (no ``unshare``: an LD_PRELOAD library instead), as
``scripts/test`` does once after the main run.

Tests that start Postfix must carry the ``postfix`` marker (``pytestmark = pytest.mark.postfix``)
so ``-m "not postfix"`` deselects them, and tests that start Sendmail the ``sendmail`` marker;
the factories fail a test that lacks it.

The tests here that run only our own commands and daemons (or postconf, postmap, openssl,
systemd-analyze on their output) use none of these fixtures: no Postfix, no root, no skip.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

# tests/integration has no __init__.py, so pytest imports this file as a top-level "conftest"
# with only this directory on sys.path (and `pytest`, unlike `python -m pytest`, does not add
# the project root). mypy names the modules tests.integration.*: import them that way.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from smtp_policy.lab.postfix import POSTFIX, PostfixFactory  # noqa: E402
from smtp_policy.lab.remote import ScriptedServer  # noqa: E402
from smtp_policy.lab.sendmail import SendmailFactory, availability  # noqa: E402

__all__ = ["PostfixFactory", "SendmailFactory"]  # also imported from here by test modules


#: Lines the drills report (``drill_report``), printed in the terminal summary of every run.
_DRILL_LINES: list[str] = []


@pytest.fixture(name="drill_report")
def _drill_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``drill_report(text)``: a result line shown under "drill results" at the end of the run.

    Drills print their counts this way so ``.ci/run`` shows them without ``-s``.
    """

    def report(text: str) -> None:
        _DRILL_LINES.append(f"{request.node.name}: {text}")

    return report


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """Print what the drills reported."""
    if _DRILL_LINES:
        terminalreporter.section("drill results")
        for line in _DRILL_LINES:
            terminalreporter.write_line(line)


@pytest.fixture(name="postfix_available", scope="session")
def _postfix_available() -> None:
    """Skip when this machine cannot run a private Postfix (fail instead with REQUIRE_POSTFIX)."""
    reason = None
    if not Path(POSTFIX).exists():
        reason = f"{POSTFIX} is missing (scripts/install-deps installs Postfix)"
    elif os.geteuid() != 0:
        reason = "a private Postfix needs root (postfix -c DIR start)"
    if reason is None:
        return
    if os.environ.get("REQUIRE_POSTFIX"):
        pytest.fail(f"REQUIRE_POSTFIX is set but {reason}")
    pytest.skip(reason)


def _require_marker(node: pytest.Item | pytest.Collector, name: str = "postfix") -> None:
    """Fail unless ``node`` carries the marker ``name``."""
    if node.get_closest_marker(name) is None:
        what = name.capitalize()
        pytest.fail(f"{node.nodeid} starts {what} but is not marked @pytest.mark.{name}")


@pytest.fixture(name="sendmail_available", scope="session")
def _sendmail_available() -> None:
    """Skip when this machine cannot run a private Sendmail (fail instead with
    REQUIRE_SENDMAIL); fetches the .debs with apt-get download when they are not cached."""
    reason = availability()
    if reason is None:
        return
    if os.environ.get("REQUIRE_SENDMAIL"):
        pytest.fail(f"REQUIRE_SENDMAIL is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(name="make_sendmail")
def _make_sendmail(
    request: pytest.FixtureRequest, sendmail_available: None
) -> Iterator[SendmailFactory]:
    """``make_sendmail(**options)`` starts a private Sendmail that lives for one test."""
    _require_marker(request.node, "sendmail")
    factory = SendmailFactory()
    yield factory
    factory.close()


@pytest.fixture(name="make_module_sendmail", scope="module")
def _make_module_sendmail(
    request: pytest.FixtureRequest, sendmail_available: None
) -> Iterator[SendmailFactory]:
    """Like ``make_sendmail``, for one instance shared by the tests of a module."""
    _require_marker(request.node, "sendmail")
    factory = SendmailFactory()
    yield factory
    factory.close()


@pytest.fixture(name="make_postfix")
def _make_postfix(
    request: pytest.FixtureRequest, postfix_available: None
) -> Iterator[PostfixFactory]:
    """``make_postfix(**options)`` starts a private Postfix that lives for one test."""
    _require_marker(request.node)
    factory = PostfixFactory()
    yield factory
    factory.close()


@pytest.fixture(name="make_module_postfix", scope="module")
def _make_module_postfix(
    request: pytest.FixtureRequest, postfix_available: None
) -> Iterator[PostfixFactory]:
    """Like ``make_postfix``, for one instance shared by the tests of a module."""
    _require_marker(request.node)
    factory = PostfixFactory()
    yield factory
    factory.close()


@pytest.fixture(name="scripted_server")
def _scripted_server() -> Iterator[ScriptedServer]:
    """A started ``ScriptedServer`` with ``SAMPLE_SCRIPT``; change ``.script`` freely."""
    with ScriptedServer() as server:
        yield server


@pytest.fixture(name="module_scripted_server", scope="module")
def _module_scripted_server() -> Iterator[ScriptedServer]:
    """A ``ScriptedServer`` with ``SAMPLE_SCRIPT`` shared by the tests of a module."""
    with ScriptedServer() as server:
        yield server
