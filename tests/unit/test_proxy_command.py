"""``smtp-policy proxy``'s options: the private inner listener and the limits."""

from __future__ import annotations

import argparse

import pytest

from smtp_policy.commands.proxy import (
    DEFAULT_UPSTREAM,
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
