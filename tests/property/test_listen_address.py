"""ListenAddress round-trips through its renderings, and garbage is only ever a ConfigError."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.config import ListenAddress
from smtp_policy.config.listen import LOOPBACK
from smtp_policy.core.errors import ConfigError

SCHEMES = frozenset({"inet", "inet6", "unix", "local"})
ports = st.integers(1, 65535)
names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}", fullmatch=True)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a)))
paths = st.lists(
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1).filter(
        lambda part: "/" not in part and part.isprintable()
    ),
    min_size=1,
    max_size=4,
).map(lambda parts: "/" + "/".join(parts))

addresses = st.one_of(
    st.builds(lambda h, p: ListenAddress("inet", host=h, port=p), st.one_of(names, ipv4), ports),
    st.builds(lambda h, p: ListenAddress("inet6", host=h, port=p), st.one_of(ipv6, names), ports),
    st.builds(lambda p: ListenAddress("unix", path=p), paths),
)


@settings(max_examples=300)
@given(addresses)
def test_the_renderings_parse_back(address: ListenAddress) -> None:
    assert ListenAddress.parse(str(address)) == address
    assert ListenAddress.parse(address.libmilter()) == address
    assert ListenAddress.parse(address.postfix()) == address
    if not address.is_unix and address.host not in SCHEMES:  # "unix:25" is a unix socket
        assert ListenAddress.parse(address.master_cf()) == address


listen_like = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda scheme, body: scheme + body,
        st.sampled_from(["inet:", "inet6:", "unix:", "local:", "[", ":", ""]),
        st.text(alphabet=st.sampled_from("0123456789:@[]/.abf ²٣\x00"), max_size=40),
    ),
)


@settings(max_examples=500)
@given(listen_like, st.sampled_from([None, LOOPBACK]))
def test_garbage_is_a_config_error_never_another_exception(
    text: str, default_host: str | None
) -> None:
    for parse in (ListenAddress.parse, ListenAddress.parse_tcp):
        problems: list[str] = []
        try:
            address = parse(text, default_host=default_host)
        except ConfigError as exc:
            problems = exc.problems
        else:
            assert ListenAddress.parse(str(address)) == address
            continue
        assert len(problems) == 1 and problems[0].startswith("cannot parse ")
