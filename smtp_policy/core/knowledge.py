"""The knowledge base: reasons, codes and text rules, built from plain data and validated.

The data comes from ``smtp_policy/data/*.toml`` (see its README); this module only receives
mappings, so it stays pure. Rules are found by their literal phrases through one compiled
trie-shaped regular expression, scanned once over the reply: the cost of a lookup grows with
the length of the reply, hardly with the number of rules.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from itertools import accumulate
from typing import Any, TypeVar

from smtp_policy.core.errors import KnowledgeError
from smtp_policy.core.model import Actor, EnhancedCode, Reason, ReplyClass
from smtp_policy.core.parse import CodeBook

_E = TypeVar("_E", Reason, Actor, ReplyClass)

#: Priorities of what the codes alone say; rules default to 50 (see data/README.md).
PRIORITY_RULE = 50
PRIORITY_ENHANCED = 40
PRIORITY_ENHANCED_SUBJECT = 30
PRIORITY_BASIC = 10


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    """How to put one reason into words."""

    reason: Reason
    description: str
    summary: str
    explanation: str
    action: str
    actor: Actor
    transient_action: str | None = None
    transient_actor: Actor | None = None
    #: The class of a reply with no code at all when a rule without its own ``class`` names
    #: this reason: a bounce that says why it failed ("Relay not permitted") failed for good.
    codeless_class: ReplyClass | None = None


@dataclass(frozen=True, slots=True)
class BasicCodeInfo:
    """One three-digit reply code."""

    code: int
    title: str
    meaning: str
    klass: ReplyClass
    reason: Reason | None
    standard: bool
    enhanced: EnhancedCode | None
    samples: tuple[str, ...]
    summary: str | None = None  # what the code usually means, shown when the code alone decided


@dataclass(frozen=True, slots=True)
class EnhancedCodeInfo:
    """One entry of the IANA enhanced status code registry, class left open (``X.1.1``)."""

    key: str
    title: str
    meaning: str
    reference: str
    reason: Reason | None
    classes: frozenset[int]


@dataclass(frozen=True, slots=True)
class Rule:
    """A provider's or product's wording, and what it means."""

    id: str
    reason: Reason | None  # None only for code-less success texts ("delivered to mailbox")
    phrases: tuple[str, ...]
    samples: tuple[str, ...]
    pattern: re.Pattern[str] | None = None
    codes: frozenset[int] = frozenset()
    classes: frozenset[ReplyClass] = frozenset()
    enhanced: frozenset[str] = frozenset()
    commands: frozenset[str] = frozenset()  # lowercase: "rcpt to", "connect", "initial connection"
    klass: ReplyClass | None = None
    priority: int = PRIORITY_RULE
    provider: str | None = None
    help_url: str | None = None
    summary: str | None = None
    explanation: str | None = None
    action: str | None = None
    actor: Actor | None = None
    #: The provider's own name and meaning for the enhanced codes its replies carry, where
    #: they differ from the registry's (Microsoft's 5.1.10 is "recipient not found").
    enhanced_title: str | None = None
    enhanced_meaning: str | None = None
    origin: str = ""


@dataclass(frozen=True, slots=True)
class KnowledgeBase:
    """Everything the classifier and the explainer know, immutable once built."""

    reasons: Mapping[Reason, ReasonInfo]
    basic: Mapping[int, BasicCodeInfo]
    enhanced: Mapping[str, EnhancedCodeInfo]
    enhanced_classes: Mapping[int, tuple[str, str]]
    rules: tuple[Rule, ...]
    codebook: CodeBook
    index: PhraseIndex = field(repr=False)
    rule_by_id: Mapping[str, Rule] = field(repr=False, default_factory=dict)
    #: Rules that need no phrase: they hold for any reply to their commands.
    command_rules: tuple[Rule, ...] = ()

    @classmethod
    def from_data(
        cls,
        reasons: Mapping[str, Any],
        basic_codes: Mapping[str, Any],
        enhanced_codes: Mapping[str, Any],
        rule_files: Mapping[str, Mapping[str, Any]],
    ) -> KnowledgeBase:
        """Build and validate; raise KnowledgeError naming the file and key of any problem."""
        reason_map = _build_reasons(reasons)
        basic = _build_basic(basic_codes.get("codes", {}))
        enhanced, classes = _build_enhanced(enhanced_codes)
        rules = tuple(
            r for name, data in sorted(rule_files.items()) for r in _build_rules(name, data)
        )
        by_id: dict[str, Rule] = {}
        for rule in rules:
            if rule.id in by_id:
                raise KnowledgeError(rule.origin, rule.id, "duplicate rule id")
            by_id[rule.id] = rule
        codebook = CodeBook(
            standard=frozenset(c for c, info in basic.items() if info.standard),
            shorthands={c: info.enhanced for c, info in basic.items() if info.enhanced},
        )
        command_rules = tuple(r for r in rules if not r.phrases)
        return cls(
            reason_map,
            basic,
            enhanced,
            classes,
            rules,
            codebook,
            PhraseIndex(rules),
            by_id,
            command_rules,
        )

    def enhanced_info(self, code: EnhancedCode) -> EnhancedCodeInfo | None:
        """The registry entry for a code, falling back to its subject (``X.7.0``)."""
        return self.enhanced.get(code.key) or self.enhanced.get(f"X.{code.subject}.0")


class PhraseIndex:
    """Finds every rule one of whose phrases occurs in a normalised text, in one scan."""

    __slots__ = ("_found_with", "_pairs", "_regex")

    def __init__(self, rules: Iterable[Rule]) -> None:
        by_phrase: dict[str, list[Rule]] = {}
        for rule in rules:
            for phrase in rule.phrases:
                by_phrase.setdefault(phrase, []).append(rule)
        phrases = sorted(by_phrase)
        #: Each phrase's ``(phrase, rule)`` candidates, in rule order.
        self._pairs = {p: tuple((p, rule) for rule in rs) for p, rs in by_phrase.items()}
        # A scan finds the longest phrase starting at each position; the phrases inside it
        # occur too: each phrase comes with those it contains, in sorted order.
        inside = _phrases_inside(phrases)
        self._found_with = {p: dict.fromkeys((p, *inside[p])) for p in phrases}
        body = _trie_pattern(phrases) if phrases else "(?!)"
        # Phrases start at a word start: fewer positions to try, and no "spam" inside "antispam".
        self._regex = re.compile(f"(?<![a-z0-9])(?=({body}))")

    def candidates(self, text: str) -> list[tuple[str, Rule]]:
        """``(phrase, rule)`` for every phrase found in ``text`` (already normalised), phrases
        in the order first met (each followed by those inside it), rules in rule order."""
        found: dict[str, None] = {}
        found_with = self._found_with
        for phrase in self._regex.findall(text):
            if phrase not in found:
                found.update(found_with[phrase])  # a phrase already found keeps its place
        pairs = self._pairs
        return [pair for phrase in found for pair in pairs[phrase]]


def _phrases_inside(phrases: list[str]) -> dict[str, tuple[str, ...]]:
    """For each phrase, the other phrases that are substrings of it, in the order given.

    One search per phrase through all of them joined by newlines (no phrase holds one), not
    a comparison of every pair.
    """
    joined = "\n".join(phrases)
    starts = list(accumulate((len(p) + 1 for p in phrases[:-1]), initial=0))
    inside: dict[str, list[str]] = {p: [] for p in phrases}
    for inner in phrases:
        at = joined.find(inner)
        while at >= 0:
            outer = phrases[bisect_right(starts, at) - 1]
            if outer != inner and (not inside[outer] or inside[outer][-1] != inner):
                inside[outer].append(inner)
            at = joined.find(inner, at + 1)
    return {p: tuple(inner) for p, inner in inside.items()}


def normalize(text: str) -> str:
    """The form rules are matched against: lowercase, whitespace collapsed."""
    return " ".join(text.lower().split())


def _trie_pattern(phrases: list[str]) -> str:
    trie: dict[str, Any] = {}
    for phrase in phrases:
        node = trie
        for ch in phrase:
            node = node.setdefault(ch, {})
        node[""] = {}
    return _node_pattern(trie)


def _node_pattern(node: Mapping[str, Any]) -> str:
    # A run of nodes with one child each and no phrase ending there is just its characters.
    chain = []
    while len(node) == 1 and "" not in node:
        ((ch, node),) = node.items()
        chain.append(_escaped(ch))
    ends = "" in node
    alts = [_escaped(ch) + _node_pattern(child) for ch, child in sorted(node.items()) if ch]
    if not alts:
        return "".join(chain)
    body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    if ends:
        body = f"(?:{body})?"
    return "".join(chain) + body


@cache
def _escaped(ch: str) -> str:
    return re.escape(ch)


# -- building from data -------------------------------------------------------------------------


def _build_reasons(data: Mapping[str, Any]) -> dict[Reason, ReasonInfo]:
    where = "reasons.toml"
    out: dict[Reason, ReasonInfo] = {}
    for name, entry in data.items():
        reason = _enum(Reason, name, where, name)
        _keys(
            entry,
            where,
            name,
            required={"description", "summary", "explanation", "action", "actor"},
            optional={"transient_action", "transient_actor", "codeless_class"},
        )
        out[reason] = ReasonInfo(
            reason=reason,
            description=_str(entry, "description", where, name),
            summary=_str(entry, "summary", where, name),
            explanation=_str(entry, "explanation", where, name),
            action=_str(entry, "action", where, name),
            actor=_enum(Actor, entry["actor"], where, f"{name}.actor"),
            transient_action=entry.get("transient_action"),
            transient_actor=_enum(Actor, entry["transient_actor"], where, f"{name}.transient_actor")
            if "transient_actor" in entry
            else None,
            codeless_class=_enum(
                ReplyClass, entry["codeless_class"], where, f"{name}.codeless_class"
            )
            if "codeless_class" in entry
            else None,
        )
    missing = set(Reason) - set(out)
    if missing:
        raise KnowledgeError(where, ", ".join(sorted(missing)), "reasons without an entry")
    return out


def _build_basic(data: Mapping[str, Any]) -> dict[int, BasicCodeInfo]:
    where = "basic_codes.toml"
    out: dict[int, BasicCodeInfo] = {}
    for key, entry in data.items():
        path = f"codes.{key}"
        if not (key.isdigit() and len(key) == 3):
            raise KnowledgeError(where, path, "a basic code has three digits")
        _keys(
            entry,
            where,
            path,
            required={"title", "meaning", "class", "samples"},
            optional={"reason", "standard", "enhanced", "summary"},
        )
        enhanced = None
        if "enhanced" in entry:
            try:
                enhanced = EnhancedCode.parse(entry["enhanced"])
            except ValueError as exc:
                raise KnowledgeError(where, f"{path}.enhanced", str(exc)) from None
        out[int(key)] = BasicCodeInfo(
            code=int(key),
            title=_str(entry, "title", where, path),
            meaning=_str(entry, "meaning", where, path),
            klass=_enum(ReplyClass, entry["class"], where, f"{path}.class"),
            reason=_enum(Reason, entry["reason"], where, f"{path}.reason")
            if "reason" in entry
            else None,
            standard=bool(entry.get("standard", True)),
            enhanced=enhanced,
            samples=tuple(entry["samples"]),
            summary=_str(entry, "summary", where, path) if "summary" in entry else None,
        )
    return out


def _build_enhanced(
    data: Mapping[str, Any],
) -> tuple[dict[str, EnhancedCodeInfo], dict[int, tuple[str, str]]]:
    where = "enhanced_codes.toml"
    classes: dict[int, tuple[str, str]] = {}
    for key, entry in data.get("class", {}).items():
        classes[int(key)] = (
            _str(entry, "title", where, f"class.{key}"),
            _str(entry, "meaning", where, f"class.{key}"),
        )
    out: dict[str, EnhancedCodeInfo] = {}
    for key, entry in data.get("codes", {}).items():
        path = f'codes."{key}"'
        if not re.fullmatch(r"X\.\d{1,3}\.\d{1,3}", key):
            raise KnowledgeError(where, path, "keys look like X.1.1")
        _keys(
            entry,
            where,
            path,
            required={"title", "meaning", "reference"},
            optional={"reason", "classes"},
        )
        out[key] = EnhancedCodeInfo(
            key=key,
            title=_str(entry, "title", where, path),
            meaning=_str(entry, "meaning", where, path),
            reference=_str(entry, "reference", where, path),
            reason=_enum(Reason, entry["reason"], where, f"{path}.reason")
            if "reason" in entry
            else None,
            classes=frozenset(entry.get("classes", (2, 4, 5))),
        )
    return out, classes


_RULE_KEYS = {
    "id",
    "reason",
    "phrases",
    "samples",
    "commands",
    "pattern",
    "codes",
    "classes",
    "enhanced",
    "class",
    "priority",
    "help_url",
    "summary",
    "explanation",
    "action",
    "actor",
    "enhanced_title",
    "enhanced_meaning",
    "provider",
    "note",
}
#: A rule's own words for people, each optional, each a non-empty string.
_RULE_WORDS = ("summary", "explanation", "action", "enhanced_title", "enhanced_meaning")


def _build_rules(name: str, data: Mapping[str, Any]) -> list[Rule]:
    where = f"rules/{name}"
    provider = data.get("provider")
    _keys(data, where, "(file)", required={"rule"}, optional={"provider", "help_url"})
    rules = []
    for i, entry in enumerate(data["rule"]):
        path = f"rule[{i}]"
        _keys(entry, where, path, required={"id", "phrases", "samples"}, optional=_RULE_KEYS)
        rid = _str(entry, "id", where, path)
        path = rid
        phrases = tuple(entry["phrases"])
        if (not phrases and not entry.get("commands")) or any(
            p != " ".join(p.lower().split()) or not p for p in phrases
        ):
            raise KnowledgeError(
                where, f"{path}.phrases", "phrases are lowercase, single-spaced, non-empty"
            )
        try:
            pattern = re.compile(entry["pattern"], re.IGNORECASE) if "pattern" in entry else None
        except re.error as exc:
            raise KnowledgeError(where, f"{path}.pattern", str(exc)) from None
        if not entry["samples"]:
            raise KnowledgeError(where, f"{path}.samples", "every rule needs a sample")
        klass = (
            _enum(ReplyClass, entry["class"], where, f"{path}.class") if "class" in entry else None
        )
        if "reason" not in entry and klass not in (ReplyClass.SUCCESS, ReplyClass.INTERMEDIATE):
            raise KnowledgeError(where, f"{path}.reason", "only success texts may omit the reason")
        words = _rule_words(entry, where, path)
        rules.append(
            Rule(
                id=rid,
                reason=_enum(Reason, entry["reason"], where, f"{path}.reason")
                if "reason" in entry
                else None,
                phrases=phrases,
                samples=tuple(entry["samples"]),
                pattern=pattern,
                codes=frozenset(entry.get("codes", ())),
                classes=frozenset(
                    _enum(ReplyClass, c, where, f"{path}.classes") for c in entry.get("classes", ())
                ),
                enhanced=frozenset(entry.get("enhanced", ())),
                commands=frozenset(c.lower() for c in entry.get("commands", ())),
                klass=klass,
                priority=int(entry.get("priority", PRIORITY_RULE)),
                provider=entry.get("provider", provider),
                help_url=_help_url(entry.get("help_url", data.get("help_url")), where, path),
                summary=words["summary"],
                explanation=words["explanation"],
                action=words["action"],
                enhanced_title=words["enhanced_title"],
                enhanced_meaning=words["enhanced_meaning"],
                actor=_enum(Actor, entry["actor"], where, f"{path}.actor")
                if "actor" in entry
                else None,
                origin=where,
            )
        )
    return rules


def _rule_words(entry: Mapping[str, Any], where: str, path: str) -> dict[str, str | None]:
    """A rule's own summary, explanation, action and enhanced-code words, checked."""
    words = {key: _str(entry, key, where, path) if key in entry else None for key in _RULE_WORDS}
    summary = words["summary"]
    if summary is not None and (summary.rstrip() != summary or summary.endswith(".")):
        raise KnowledgeError(where, f"{path}.summary", "a summary is one line, no final period")
    for key in ("explanation", "action", "enhanced_meaning"):
        text = words[key]
        if text is not None and not text.endswith((".", ")")):
            raise KnowledgeError(where, f"{path}.{key}", "whole sentences, ending with a period")
    if ("enhanced_title" in entry) != ("enhanced_meaning" in entry):
        raise KnowledgeError(where, path, "enhanced_title and enhanced_meaning go together")
    return words


def _help_url(value: Any, where: str, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"https?://\S+", value):
        raise KnowledgeError(where, f"{path}.help_url", "expected an http(s) address")
    return value


def _keys(entry: Any, where: str, path: str, *, required: set[str], optional: set[str]) -> None:
    if not isinstance(entry, Mapping):
        raise KnowledgeError(where, path, "expected a table")
    missing = required - entry.keys()
    if missing:
        raise KnowledgeError(where, path, f"missing {', '.join(sorted(missing))}")
    unknown = entry.keys() - required - optional
    if unknown:
        raise KnowledgeError(where, path, f"unknown key(s) {', '.join(sorted(unknown))}")


def _str(entry: Mapping[str, Any], key: str, where: str, path: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise KnowledgeError(where, f"{path}.{key}", "expected a non-empty string")
    return value


def _enum(kind: type[_E], value: Any, where: str, path: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise KnowledgeError(where, path, f"unknown {kind.__name__} {value!r}") from None
