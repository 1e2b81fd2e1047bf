"""Admin policy rules and the pure matcher the milter and policy adapters share.

Theory of operation: a :class:`PolicyRule` belongs to one SMTP stage and holds match keys
(client networks, sender/recipient/HELO patterns, a size threshold, whether the client
authenticated). All keys a rule has must match (AND); within a key's list any entry may
match (OR); a key the rule leaves out matches anything. A fact that is not known yet (no
recipient at MAIL time, no size without SIZE=) makes a key that needs it fail. The first rule
of the stage that matches wins, in configuration order. No I/O here: the adapters gather the
facts, :func:`match_rules` decides.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from smtp_policy.core.model import EnhancedCode, Reason
from smtp_policy.core.stages import ORDER, Stage

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RuleAction(StrEnum):
    """What a matching rule does with the command or message."""

    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"
    QUARANTINE = "quarantine"
    ACCEPT = "accept"


#: Actions that send a 4xx/5xx reply (and so may carry code, enhanced and text).
REPLY_ACTIONS = frozenset({RuleAction.REJECT, RuleAction.TEMPFAIL})

#: The first stage at which each match key's fact is known.
KNOWN_FROM = {
    "client_network": Stage.CONNECT,
    "helo": Stage.HELO,
    "sender": Stage.MAIL,
    "authenticated": Stage.MAIL,
    "size_over": Stage.MAIL,
    "recipient": Stage.RCPT,
}


def known_at(key: str, stage: Stage) -> bool:
    """Whether the fact behind match key ``key`` can be known at ``stage``."""
    return ORDER.index(stage) >= ORDER.index(KNOWN_FROM[key])


@dataclass(frozen=True, slots=True)
class RuleFacts:
    """What an adapter knows about the session when it asks the rules.

    ``sender``/``recipient`` may carry angle brackets; the null sender is ``""``. ``None``
    means "not known at this stage".
    """

    client_addr: str = ""
    sender: str | None = None
    recipient: str | None = None
    size: int | None = None
    authenticated: bool = False
    helo: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ``[[rules]]`` entry, validated; empty match tuples mean "any"."""

    name: str
    stage: Stage
    action: RuleAction
    client_network: tuple[IPNetwork, ...] = ()
    sender: tuple[re.Pattern[str], ...] = ()
    recipient: tuple[re.Pattern[str], ...] = ()
    helo: tuple[re.Pattern[str], ...] = ()
    size_over: int | None = None
    authenticated: bool | None = None
    code: int | None = None
    enhanced: EnhancedCode | None = None
    reason: Reason | None = None
    text: str | None = None

    def matches(self, facts: RuleFacts) -> bool:
        """Whether every match key of this rule holds for ``facts`` (the stage aside)."""
        return (
            _network_ok(self.client_network, facts.client_addr)
            and _patterns_ok(self.sender, facts.sender)
            and _patterns_ok(self.recipient, facts.recipient)
            and _patterns_ok(self.helo, facts.helo)
            and (self.size_over is None or (facts.size is not None and facts.size > self.size_over))
            and (self.authenticated is None or self.authenticated == facts.authenticated)
        )


def match_rules(
    rules: Iterable[PolicyRule], stage: Stage | str, facts: RuleFacts
) -> PolicyRule | None:
    """The first rule for ``stage`` that matches ``facts``, or None."""
    wanted = Stage(stage)
    for rule in rules:
        if rule.stage is wanted and rule.matches(facts):
            return rule
    return None


def compile_pattern(text: str) -> re.Pattern[str]:
    """A sender/recipient/HELO pattern: ``/regex/`` (searched) or a glob (whole value).

    Both ignore case. Raises ``re.error`` for a bad regular expression.
    """
    if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
        return re.compile(text[1:-1], re.IGNORECASE)
    return re.compile(r"\A" + fnmatch.translate(text), re.IGNORECASE)


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


def _network_ok(networks: tuple[IPNetwork, ...], client_addr: str) -> bool:
    return not networks or in_networks(client_addr, networks)


def _patterns_ok(patterns: tuple[re.Pattern[str], ...], value: str | None) -> bool:
    if not patterns:
        return True
    if value is None:
        return False
    bare = value.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1]
    return any(p.search(bare) for p in patterns)
