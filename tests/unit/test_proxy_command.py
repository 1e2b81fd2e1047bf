"""``smtp-policy proxy``'s options: the private inner listener and the limits."""

from __future__ import annotations

import argparse
import asyncio
import sys

import pytest

from smtp_policy.commands.proxy import (
    DEFAULT_UPSTREAM,
    event_loop,
    postfix_config,
    register,
    run,
    upstream_option,
)
from smtp_policy.core.errors import ConfigError


def test_the_default_inner_listener_is_a_unix_socket_in_public() -> None:
    """By default master.cf gets a unix smtpd in public/ that trusts only unix clients."""
    lines = postfix_config(upstream_option(DEFAULT_UPSTREAM)).splitlines()
    assert "smtp-policy-proxy unix n - y - - smtpd" in lines
    assert "  -o smtpd_authorized_xclient_hosts=127.0.0.1" in lines
    assert not [line for line in lines if " inet " in line and not line.startswith("#")]
    assert any("SupplementaryGroups=postdrop" in line for line in lines)


def test_a_tcp_inner_listener_comes_with_a_warning() -> None:
    lines = postfix_config(upstream_option("inet:127.0.0.1:10026")).splitlines()
    assert "127.0.0.1:10026 inet n - y - - smtpd" in lines
    assert any(line.startswith("# WARNING") for line in lines)


def test_a_unix_upstream_must_be_in_public() -> None:
    with pytest.raises(ConfigError, match=r"^--upstream: /run/x\.sock is not in Postfix's public/"):
        upstream_option("unix:/run/x.sock")
    with pytest.raises(ConfigError, match=r"^--upstream: cannot parse"):
        upstream_option("unix:relative")


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--hard-error-limit", "0", "--hard-error-limit must be at least 1"),
        ("--max-per-address", "0", "--max-per-address must be at least 1"),
        ("--soft-error-limit", "-1", "--soft-error-limit cannot be negative"),
        ("--error-sleep-time", "nan", "--error-sleep-time must be a number of seconds"),
        ("--greet-timeout", "-5", "--greet-timeout must be a number of seconds"),
    ],
)
def test_limits_are_checked(option: str, value: str, problem: str) -> None:
    parser = argparse.ArgumentParser()
    register(parser)
    args = parser.parse_args(["--listen", "127.0.0.1:2525", option, value])
    with pytest.raises(ConfigError) as caught:
        run(args)
    assert caught.value.problems == [problem]


def test_the_event_loop_is_uvloop_when_installed_and_the_policy_comes_back() -> None:
    """auto and uvloop run the daemon on uvloop; asyncio's policy is back afterwards."""
    uvloop = pytest.importorskip("uvloop")
    before = asyncio.get_event_loop_policy()
    for choice in ("auto", "uvloop"):
        with event_loop(choice) as chosen:
            assert chosen == "uvloop"
            assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
        assert asyncio.get_event_loop_policy() is before
    with event_loop("asyncio") as chosen:
        assert chosen == "asyncio"
        assert asyncio.get_event_loop_policy() is before


def test_without_uvloop_auto_falls_back_and_uvloop_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing uvloop: auto runs on asyncio's loop, --event-loop uvloop says why not."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    with event_loop("auto") as chosen:
        assert chosen == "asyncio"
    with pytest.raises(ConfigError, match="uvloop is not installed"), event_loop("uvloop"):
        pass
