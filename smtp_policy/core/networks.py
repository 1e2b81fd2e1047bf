"""Client addresses as MTAs write them, and whether one lies in a list of networks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> IPAddress | None:
    """A client address as MTAs write it (``192.0.2.1``, ``IPv6:2001:db8::1``, ``[::1]``)."""
    text = text.strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def in_networks(client_addr: str, networks: Iterable[IPNetwork]) -> bool:
    """Whether ``client_addr`` parses and lies in one of ``networks``."""
    addr = parse_address(client_addr)
    return addr is not None and any(addr in net for net in networks)
