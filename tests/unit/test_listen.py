"""ListenAddress: the one parser of every listen-address spelling, and its renderings."""

from __future__ import annotations

import pytest

from smtp_policy.commands.proxy import postfix_config, tcp_option
from smtp_policy.config import ListenAddress
from smtp_policy.config.listen import LOOPBACK
from smtp_policy.config.postfix import milter_endpoint, socketmap
from smtp_policy.core.errors import ConfigError

V4 = ListenAddress("inet", host="127.0.0.1", port=8895)
V6 = ListenAddress("inet6", host="::1", port=8895)
SOCKET = ListenAddress("unix", path="/run/m.sock")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("inet:127.0.0.1:8895", V4),
        ("inet:8895@127.0.0.1", V4),
        ("127.0.0.1:8895", V4),
        ("inet:[::1]:8895", V6),
        ("inet:::1:8895", V6),
        ("inet6:8895@::1", V6),
        ("inet6:8895@[::1]", V6),
        ("inet:8895@::1", V6),
        ("[::1]:8895", V6),
        ("::1:8895", V6),
        ("unix:/run/m.sock", SOCKET),
        ("local:/run/m.sock", SOCKET),
        ("inet:localhost:25", ListenAddress("inet", host="localhost", port=25)),
        ("inet6:25@localhost", ListenAddress("inet6", host="localhost", port=25)),
    ],
)
def test_every_spelling_parses(text: str, address: ListenAddress) -> None:
    assert ListenAddress.parse(text) == address


def test_a_bare_port_needs_a_default_host() -> None:
    """``:PORT`` (the metrics endpoint's) is on the default host; elsewhere it is refused."""
    assert ListenAddress.parse(":9150", default_host=LOOPBACK) == ListenAddress(
        "inet", host="127.0.0.1", port=9150
    )
    with pytest.raises(ConfigError, match="no host"):
        ListenAddress.parse(":9150")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("nonsense", "expected inet:HOST:PORT or unix:/path"),
        ("tcp:127.0.0.1:8896", "expected inet:HOST:PORT or unix:/path"),
        ("inet:99999@127.0.0.1", "port 99999 is out of range (1-65535)"),
        ("inet:127.0.0.1:0", "port 0 is out of range (1-65535)"),
        ("inet:127.0.0.1:²", "port '²' is not a number"),
        ("inet:127.0.0.1:", "no port"),
        ("inet::8895", "no host"),
        ("inet6:8895", "expected inet:HOST:PORT or unix:/path"),
        ("inet:[nohost]x:25", "'[nohost]x' is not a host name or IP address"),
        ("inet:[fe80::zz]:25", "'fe80::zz' is not an IPv6 address"),
        ("unix:run/p.sock", "a unix socket path must be absolute"),
        ("unix:", "a unix socket path must be absolute"),
        ("unix:/a\x00b", "control characters"),
    ],
)
def test_bad_addresses_are_one_clear_config_error(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ListenAddress.parse(text)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"cannot parse {text!r}: ")
    assert why in caught.value.problems[0]


def test_renderings() -> None:
    """Canonical, libmilter's, Postfix's client and master.cf forms, and (host, port)."""
    assert (str(V4), V4.libmilter(), V4.postfix(), V4.master_cf()) == (
        "inet:127.0.0.1:8895",
        "inet:8895@127.0.0.1",
        "inet:127.0.0.1:8895",
        "127.0.0.1:8895",
    )
    assert (str(V6), V6.libmilter(), V6.postfix(), V6.master_cf()) == (
        "inet:[::1]:8895",
        "inet6:8895@::1",
        "inet:[::1]:8895",
        "[::1]:8895",
    )
    assert (str(SOCKET), SOCKET.libmilter(), SOCKET.postfix()) == ("unix:/run/m.sock",) * 3
    assert V6.host_port == ("::1", 8895)
    with pytest.raises(ConfigError, match="unix socket"):
        _ = SOCKET.host_port


def test_tcp_only_users_refuse_a_unix_socket() -> None:
    with pytest.raises(ConfigError, match=r"^--upstream: cannot parse 'unix:/x': a unix socket"):
        tcp_option("--upstream", "unix:/x")
    with pytest.raises(ConfigError, match=r"expected inet:HOST:PORT$"):
        tcp_option("--listen", "nonsense")
    assert tcp_option("--listen", "0.0.0.0:25") == ListenAddress("inet", host="0.0.0.0", port=25)


def test_postfix_lines_write_ipv6_in_brackets() -> None:
    assert milter_endpoint("inet6:8895@::1") == "inet:[::1]:8895"
    assert socketmap("inet:[::1]:8896", "dsn") == "socketmap:inet:[::1]:8896:dsn"
    lines = postfix_config(tcp_option("--upstream", "[::1]:10026")).splitlines()
    assert "[::1]:10026 inet n - y - - smtpd" in lines
    assert "  -o smtpd_authorized_xclient_hosts=[::1]" in lines
