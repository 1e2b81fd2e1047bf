"""Validation: parse each source, merge the layers, check every section like a type.

A value that is not a table replaces the earlier one (arrays too), except ``[[rules]]``: rules
accumulate across files, and a rule whose ``name`` an earlier file already used replaces that
rule in place. Validation collects every problem instead of stopping at the first; each one is
a single line ``FILE:LINE: key.path: message`` (the line from :func:`find_line`).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from smtp_policy.config.advice import advise
from smtp_policy.config.lines import find_line
from smtp_policy.config.listen import LOOPBACK, ListenAddress
from smtp_policy.config.model import (
    MILTER_ENGINES,
    MILTER_EVENT_MODES,
    BannerConfig,
    Config,
    ConfigReport,
    ConfigSource,
    EventsConfig,
    FollowConfig,
    KeyPath,
    MapsConfig,
    MetricsConfig,
    MilterConfig,
    PolicyConfig,
)
from smtp_policy.core.bounce import TEMPLATE_KEYS, TEMPLATES, BounceConfig, bounce_file
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.model import EnhancedCode, Reason
from smtp_policy.core.networks import IPNetwork
from smtp_policy.core.policy import (
    KNOWN_FROM,
    REPLY_ACTIONS,
    PolicyRule,
    RuleAction,
    compile_pattern,
    known_at,
)
from smtp_policy.core.stages import Stage
from smtp_policy.core.texts import (
    BANNER_PLACEHOLDERS,
    TextsConfig,
    TextSet,
    help_url_problems,
    template_problems,
)
from smtp_policy.data.i18n import LANGUAGES, bounce_words, shipped_translation

_E = TypeVar("_E", Stage, RuleAction)
_K = TypeVar("_K")


# --- problems and where they are ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Problem:
    path: KeyPath
    message: str
    source: int | None = None  # None: the file that last set the key


class _Checker:
    """Collects problems while the sections are read; fallbacks keep reading going."""

    def __init__(self, problems: list[_Problem] | None = None, source: int | None = None) -> None:
        self.problems: list[_Problem] = [] if problems is None else problems
        self.source = source  # None: problems belong to the file that last set the key

    def at(self, source: int) -> _Checker:
        """A checker whose problems belong to file ``source`` (sharing the problem list)."""
        return _Checker(self.problems, source)

    def add(self, path: KeyPath, message: str) -> None:
        self.problems.append(_Problem(path, message, self.source))

    def table(
        self,
        value: object,
        path: KeyPath,
        allowed: Collection[str] | None,
    ) -> dict[str, Any]:
        """``value`` as a table with only ``allowed`` keys (None: any key); reports others."""
        if not isinstance(value, dict):
            self.add(path, f"expected a table, got {_describe(value)}")
            return {}
        if allowed is None:
            return value
        for key in value:
            if key not in allowed:
                self.add((*path, key), _unknown("key", key, allowed))
        return {k: v for k, v in value.items() if k in allowed}

    def get(
        self,
        table: Mapping[str, Any],
        path: KeyPath,
        key: str,
        kind: type,
        fallback: Any,
    ) -> Any:
        """``table[key]`` if it has type ``kind``; otherwise report and return ``fallback``."""
        if key not in table:
            self.add((*path, key), "missing (required)")
            return fallback
        value = table[key]
        if not _is(value, kind):
            self.add((*path, key), f"expected {_KIND[kind]}, got {_describe(value)}")
            return fallback
        return value

    def strings(self, table: Mapping[str, Any], path: KeyPath, key: str) -> list[str]:
        """An array of strings (reported element by element)."""
        value = self.get(table, path, key, list, [])
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            else:
                self.add((*path, key, i), f"expected a string, got {_describe(item)}")
        return out


_KIND: dict[type, str] = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "a table",
}


def _is(value: object, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    names = {str: "string", int: "integer", float: "float", list: "array", dict: "table"}
    name = names.get(type(value), "date/time")
    if isinstance(value, list | dict):
        return f"an {name}" if name == "array" else f"a {name}"
    shown = json.dumps(value) if isinstance(value, str) else str(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{name} {shown}"


def _unknown(what: str, name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}"


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if _BARE.fullmatch(part) else json.dumps(part))
    return out


def _origin(path: KeyPath, origins: Mapping[KeyPath, int]) -> int | None:
    for n in range(len(path), 0, -1):
        if path[:n] in origins:
            return origins[path[:n]]
    return None


def _located(
    problem: _Problem, sources: Sequence[ConfigSource], origins: Mapping[KeyPath, int]
) -> tuple[int, int, str]:
    """(source index, line, formatted problem)."""
    index = problem.source if problem.source is not None else _origin(problem.path, origins)
    index = 0 if index is None else index
    source = sources[index]
    line = find_line(source.text, problem.path)
    where = f"{source.label}:{line}" if line else source.label
    return index, line or 0, f"{where}: {_dotted(problem.path)}: {problem.message}"


# --- parsing and merging -----------------------------------------------------------------

_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


def _parse(source: ConfigSource) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return tomllib.loads(source.text), None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_POSITION.search(message)
        line = int(found.group(1)) if found else max(1, len(source.text.splitlines()))
        return None, f"{source.label}:{line}: invalid TOML: {message}"


@dataclass
class _Merged:
    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, int] = field(default_factory=dict)
    rules: list[tuple[int, int, Any]] = field(default_factory=list)  # (source, index, table)


def _merge(parsed: Sequence[tuple[int, dict[str, Any]]], ck: _Checker) -> _Merged:
    merged = _Merged()
    for index, data in parsed:
        rules = data.pop("rules", None)
        _merge_into(merged.data, data, (), index, merged.origins)
        if rules is not None:
            _merge_rules(merged.rules, rules, index, ck)
    return merged


def _merge_into(
    dst: dict[str, Any],
    src: Mapping[str, Any],
    prefix: KeyPath,
    index: int,
    origins: dict[KeyPath, int],
) -> None:
    for key, value in src.items():
        path = (*prefix, key)
        origins[path] = index
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge_into(dst[key], value, path, index, origins)
        elif isinstance(value, dict):
            dst[key] = {}
            _merge_into(dst[key], value, path, index, origins)
        else:
            dst[key] = value


def _merge_rules(
    merged: list[tuple[int, int, Any]], rules: object, index: int, ck: _Checker
) -> None:
    if not isinstance(rules, list):
        message = f"expected an array of tables [[rules]], got {_describe(rules)}"
        ck.at(index).add(("rules",), message)
        return
    earlier = {_rule_name(table): n for n, (_, _, table) in enumerate(merged)}
    seen: dict[str, int] = {}
    for i, table in enumerate(rules):
        name = _rule_name(table)
        if name and name in seen:
            ck.at(index).add(
                ("rules", i, "name"), f"duplicate rule name {name!r} (also rules[{seen[name]}])"
            )
        if name:
            seen[name] = i
        if name and name in earlier:  # a later file redefines the rule, in place
            merged[earlier[name]] = (index, i, table)
        else:
            merged.append((index, i, table))


def _rule_name(table: object) -> str:
    name = table.get("name") if isinstance(table, dict) else None
    return name if isinstance(name, str) else ""


# --- validation ----------------------------------------------------------------------------

_SECTIONS: dict[str, tuple[str, ...]] = {
    "milter": ("listen", "timeout", "engine", "events"),
    "maps": ("listen", "same_line", "dsn_deferrals", "events_per_second"),
    "policy": ("listen", "events_per_second"),
    "metrics": ("listen", "top_domains", "queue_interval", "queue_config_directory"),
    "events": ("output",),
    "follow": ("logs", "journal", "journal_unit", "state_dir"),
    "texts": (
        "default_language",
        "internal_networks",
        "help_url",
        "default",
        "reason",
        "enhanced",
        "code",
    ),
    "banner": ("greeting", "goodbye"),
    "bounce": ("language", "contact", "help_url", *TEMPLATES),
}
_TOP_KEYS = (*_SECTIONS, "rules")
_RULE_KEYS = (
    "name",
    "stage",
    "client_network",
    "sender",
    "recipient",
    "helo",
    "size_over",
    "authenticated",
    "action",
    "code",
    "enhanced",
    "reason",
    "text",
)
_ENTRY_KEYS = ("external", "internal", "lang")
_LANG_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENHANCED_KEY = re.compile(r"[245X]\.\d{1,3}\.\d{1,3}")


def validate(sources: Sequence[ConfigSource]) -> tuple[Config | None, list[str]]:
    """Parse, merge and check ``sources`` (defaults first); the Config is None on problems.

    Problems come sorted by file and line, each as ``FILE:LINE: key.path: message``.
    """
    report = check_sources(sources)
    return report.config, report.problems


def check_sources(sources: Sequence[ConfigSource]) -> ConfigReport:
    """:func:`validate`, with the warnings (:mod:`.advice`) in the same form as the problems."""
    ck = _Checker()
    parsed: list[tuple[int, dict[str, Any]]] = []
    syntax: list[tuple[int, int, str]] = []
    for index, source in enumerate(sources):
        data, error = _parse(source)
        if data is None:
            syntax.append((index, 0, error or f"{source.label}: unreadable"))
        else:
            parsed.append((index, data))
    merged = _merge(parsed, ck)
    config = _build(ck, merged, sources)
    problems = _in_order(syntax + [_located(p, sources, merged.origins) for p in ck.problems])
    advice = [_Problem(a.path, a.message, a.source) for a in advise(merged.data, merged.rules)]
    warnings = _in_order([_located(p, sources, merged.origins) for p in advice])
    return ConfigReport(None if problems else config, problems, list(sources), warnings)


def _in_order(found: list[tuple[int, int, str]]) -> list[str]:
    """The texts sorted by file and line (stable: one line keeps the order of discovery)."""
    return [text for _, _, text in sorted(found, key=lambda item: item[:2])]


def _events_per_second(ck: _Checker, table: Mapping[str, Any], path: KeyPath) -> int:
    rate: int = ck.get(table, path, "events_per_second", int, 1000)
    if rate < 1:
        ck.add((*path, "events_per_second"), f"must be at least 1, got {rate}")
        return 1000
    return rate


def _build(ck: _Checker, merged: _Merged, sources: Sequence[ConfigSource]) -> Config:
    top = ck.table(merged.data, (), _TOP_KEYS)
    sections = {
        name: ck.table(top.get(name, {}), (name,), keys) for name, keys in _SECTIONS.items()
    }
    config = Config(
        milter=_milter(ck, sections["milter"]),
        maps=MapsConfig(
            _listen(ck, sections["maps"], ("maps",))[0],
            ck.get(sections["maps"], ("maps",), "same_line", bool, False),
            ck.get(sections["maps"], ("maps",), "dsn_deferrals", bool, False),
            _events_per_second(ck, sections["maps"], ("maps",)),
        ),
        policy=PolicyConfig(
            _listen(ck, sections["policy"], ("policy",))[0],
            _events_per_second(ck, sections["policy"], ("policy",)),
        ),
        metrics=_metrics(ck, sections["metrics"]),
        events=_events(ck, sections["events"]),
        follow=_follow(ck, sections["follow"]),
        rules=tuple(r for r in (_rule(ck, *entry) for entry in merged.rules) if r is not None),
        texts=_texts(ck, sections["texts"]),
        banner=_banner(ck, sections["banner"]),
        bounce=_bounce(ck, sections["bounce"]),
        files=tuple(s.path for s in sources if s.path is not None),
    )
    _check_listen_clashes(ck, config)
    return config


# --- [milter] [maps] [policy] [metrics] ----------------------------------------------------


def _milter(ck: _Checker, table: Mapping[str, Any]) -> MilterConfig:
    """``[milter]``; ``listen`` is kept in libmilter's form."""
    path: KeyPath = ("milter",)
    listen, address = _listen(ck, table, path)
    timeout = ck.get(table, path, "timeout", int, 600)
    if isinstance(timeout, int) and timeout <= 0:
        ck.add((*path, "timeout"), "must be a positive number of seconds")
    engine = ck.get(table, path, "engine", str, "asyncio")
    if engine not in MILTER_ENGINES:
        ck.add((*path, "engine"), f"must be one of {', '.join(MILTER_ENGINES)}")
        engine = "asyncio"
    events = ck.get(table, path, "events", str, "stages")
    if events not in MILTER_EVENT_MODES:
        ck.add((*path, "events"), f"must be one of {', '.join(MILTER_EVENT_MODES)}")
        events = "stages"
    return MilterConfig(address.libmilter() if address else listen, timeout, engine, events)


def _listen(
    ck: _Checker, table: Mapping[str, Any], path: KeyPath, *, default_host: str | None = None
) -> tuple[str, ListenAddress | None]:
    """``listen`` as written and parsed (None when empty or reported as a problem)."""
    listen: str = ck.get(table, path, "listen", str, "")
    if not listen:
        return listen, None
    try:
        return listen, ListenAddress.parse(listen, default_host=default_host)
    except ConfigError as exc:
        for problem in exc.problems:
            ck.add((*path, "listen"), problem)
        return listen, None


def _metrics(ck: _Checker, table: Mapping[str, Any]) -> MetricsConfig:
    """``[metrics]``: ``HOST:PORT`` (``:PORT`` is on the loopback), as ``--metrics-listen``."""
    listen, address = _listen(ck, table, ("metrics",), default_host=LOOPBACK)
    if address is not None and address.is_unix:
        ck.add(("metrics", "listen"), "metrics are served over HTTP: use inet:HOST:PORT")
    path: KeyPath = ("metrics",)
    top = ck.get(table, path, "top_domains", int, 0)
    if isinstance(top, int) and not 0 <= top <= 1000:
        ck.add((*path, "top_domains"), "must be a number of domains from 0 to 1000")
    interval = ck.get(table, path, "queue_interval", int, 0)
    if isinstance(interval, int) and interval < 0:
        ck.add((*path, "queue_interval"), "must be 0 (off) or a number of seconds")
    directory: str = ck.get(table, path, "queue_config_directory", str, "")
    return MetricsConfig(listen or None, top, interval, directory or None)


def _check_listen_clashes(ck: _Checker, config: Config) -> None:
    seen: dict[tuple[str, str, int], str] = {}
    for name, listen in (
        ("milter", config.milter.listen),
        ("maps", config.maps.listen),
        ("policy", config.policy.listen),
        ("metrics", config.metrics.listen or ""),
    ):
        key = _socket_key(listen)
        if key is None:
            continue
        if key in seen:
            ck.add((name, "listen"), f"{listen!r} is already {seen[key]}.listen")
        seen.setdefault(key, name)


def _socket_key(listen: str) -> tuple[str, str, int] | None:
    """What two listen addresses share when they clash (None: not an address)."""
    try:
        address = ListenAddress.parse(listen, default_host=LOOPBACK)
    except ConfigError:
        return None
    if address.is_unix:
        return ("unix", address.path, 0)
    return ("tcp", address.host.lower(), address.port)


# --- [events] [follow] ----------------------------------------------------------------------


def _events(ck: _Checker, table: Mapping[str, Any]) -> EventsConfig:
    output: str = ck.get(table, ("events",), "output", str, "-")
    if output != "-":
        problem = _path_problem(output, directory=False)
        if problem:
            ck.add(("events", "output"), problem)
    return EventsConfig(output)


def _follow(ck: _Checker, table: Mapping[str, Any]) -> FollowConfig:
    path: KeyPath = ("follow",)
    logs = ck.strings(table, path, "logs")
    raw = table.get("logs")
    for i, log in enumerate(raw if isinstance(raw, list) else []):
        if isinstance(log, str) and not log.startswith("/"):
            ck.add((*path, "logs", i), f"{log!r}: must be an absolute path")
    follow = FollowConfig(
        logs=tuple(logs),
        journal=ck.get(table, path, "journal", bool, False),
        journal_unit=ck.get(table, path, "journal_unit", str, "postfix@-.service"),
        state_dir=ck.get(table, path, "state_dir", str, ""),
    )
    if not follow.journal_unit:
        ck.add((*path, "journal_unit"), "must name a systemd unit, e.g. 'postfix@-.service'")
    if follow.enabled and follow.state_dir:
        problem = _path_problem(follow.state_dir, directory=True)
        if problem:
            ck.add((*path, "state_dir"), problem)
    return follow


def _path_problem(target: str, *, directory: bool) -> str | None:
    """Why ``target`` cannot be written (or created) by this process, or None."""
    if not target.startswith("/"):
        return f"{target!r}: must be an absolute path" + ("" if directory else ' or "-"')
    if os.path.lexists(target):
        if directory != os.path.isdir(target):
            return f"{target} " + ("is not a directory" if directory else "is a directory")
        mode = os.W_OK | (os.X_OK if directory else 0)
        return None if os.access(target, mode) else f"{target} is not writable"
    parent = os.path.dirname(target.rstrip("/")) or "/"
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot create {target}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {target}: {parent} is not writable"
    return None


# --- [[rules]] -------------------------------------------------------------------------------


def _rule(checker: _Checker, source: int, index: int, value: object) -> PolicyRule | None:
    ck = checker.at(source)
    path: KeyPath = ("rules", index)
    before = len(ck.problems)
    table = ck.table(value, path, _RULE_KEYS)
    name = ck.get(table, path, "name", str, "")
    if name and not _RULE_NAME.fullmatch(name):
        ck.add((*path, "name"), "use letters, digits, '.', '_' and '-' (at most 64)")
    stage = _choice(ck, table, path, "stage", Stage)
    action = _choice(ck, table, path, "action", RuleAction)
    matches = _rule_matches(ck, table, path, stage)
    reply = _rule_reply(ck, table, path, action)
    if len(ck.problems) > before or stage is None or action is None:
        return None
    return PolicyRule(name=name, stage=stage, action=action, **matches, **reply)


def _choice(
    ck: _Checker, table: Mapping[str, Any], path: KeyPath, key: str, enum: type[_E]
) -> _E | None:
    text = ck.get(table, path, key, str, None)
    if text is None:
        return None
    try:
        return enum(text)
    except ValueError:
        ck.add((*path, key), _unknown(key, text, [e.value for e in enum]))
        return None


def _rule_matches(
    ck: _Checker, table: Mapping[str, Any], path: KeyPath, stage: Stage | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("client_network", "sender", "recipient", "helo"):
        if key in table:
            items = ck.strings(table, path, key)
            if not items and isinstance(table[key], list):
                ck.add((*path, key), "empty list: leave the key out to match anything")
            out[key] = tuple(_compiled(ck, (*path, key), key, items))
    if "size_over" in table:
        out["size_over"] = ck.get(table, path, "size_over", int, None)
        if out["size_over"] is not None and out["size_over"] < 0:
            ck.add((*path, "size_over"), "must be a number of bytes (0 or more)")
    if "authenticated" in table:
        out["authenticated"] = ck.get(table, path, "authenticated", bool, None)
    for key in out:
        if stage is not None and not known_at(key, stage):
            ck.add(
                (*path, key),
                f"never known at stage {stage.value!r}: {key} is known from stage "
                f"{KNOWN_FROM[key].value!r} on, so this rule could never match",
            )
    return out


def _compiled(ck: _Checker, path: KeyPath, key: str, items: list[str]) -> list[Any]:
    out: list[Any] = []
    for i, item in enumerate(items):
        try:
            out.append(
                ipaddress.ip_network(item, strict=True)
                if key == "client_network"
                else compile_pattern(item)
            )
        except ValueError as exc:
            ck.add((*path, i), f"not a network: {exc}")
        except re.error as exc:
            ck.add((*path, i), f"bad regular expression {item!r}: {exc}")
    return out


def _rule_reply(
    ck: _Checker, table: Mapping[str, Any], path: KeyPath, action: RuleAction | None
) -> dict[str, Any]:
    code = ck.get(table, path, "code", int, None) if "code" in table else None
    enhanced = _enhanced(ck, table, path)
    reason = None
    if "reason" in table:
        reason = _reason(ck, table.get("reason"), (*path, "reason"))
    text = ck.get(table, path, "text", str, None) if "text" in table else None
    if text is not None:
        for problem in template_problems(text):
            ck.add((*path, "text"), problem)
    if action is None:
        return {"reason": reason}
    if action not in REPLY_ACTIONS:
        for key in ("code", "enhanced", "text"):
            if key in table:
                ck.add(
                    (*path, key),
                    f"{action.value} rules send no reply: leave {key} out "
                    "(only reject and tempfail rules reply)",
                )
        return {"reason": reason}
    klass = 5 if action is RuleAction.REJECT else 4
    if code is not None and not _code_fits(ck, code, klass, action, (*path, "code")):
        code = None
    if enhanced is not None and enhanced.klass != (code // 100 if code else klass):
        what = f"code {code}" if code else f"a {action.value} rule"
        ck.add(
            (*path, "enhanced"),
            f"{enhanced} does not match {what}: its class "
            f"(first digit) must be {code // 100 if code else klass}",
        )
    code = code or (550 if klass == 5 else 451)
    enhanced = enhanced or EnhancedCode(klass, 7, 1)
    return {"code": code, "enhanced": enhanced, "reason": reason, "text": text}


def _code_fits(ck: _Checker, code: int, klass: int, action: RuleAction, path: KeyPath) -> bool:
    if not 200 <= code <= 599:
        ck.add(path, f"{code} is not an SMTP reply code")
        return False
    if code // 100 == klass:
        return True
    other = "tempfail" if klass == 5 else "reject"
    kind = {
        2: "a success (2xx)",
        3: "an intermediate (3xx)",
        4: "a temporary (4xx)",
        5: "a permanent (5xx)",
    }[code // 100]
    hint = f'; use action = "{other}" for {code // 100}xx' if code // 100 in (4, 5) else ""
    ck.add(path, f"{code} is {kind} code: a {action.value} rule needs {klass}xx{hint}")
    return False


def _enhanced(ck: _Checker, table: Mapping[str, Any], path: KeyPath) -> EnhancedCode | None:
    if "enhanced" not in table:
        return None
    text = ck.get(table, path, "enhanced", str, None)
    if text is None:
        return None
    try:
        return EnhancedCode.parse(text)
    except ValueError:
        ck.add(
            (*path, "enhanced"),
            f'{text!r} is not an enhanced status code like "5.7.1" (class 2, 4 or 5)',
        )
        return None


def _reason(ck: _Checker, value: object, path: KeyPath) -> Reason | None:
    if not isinstance(value, str):
        ck.add(path, f"expected a string, got {_describe(value)}")
        return None
    try:
        return Reason(value)
    except ValueError:
        ck.add(path, _unknown("reason", value, [r.value for r in Reason]))
        return None


# --- [texts] [banner] -----------------------------------------------------------------------


def _texts(ck: _Checker, table: Mapping[str, Any]) -> TextsConfig:
    path: KeyPath = ("texts",)
    language = ck.get(table, path, "default_language", str, "en")
    if not _LANG_TAG.fullmatch(language):
        ck.add(
            (*path, "default_language"), f"{language!r} is not a language tag like 'en' or 'pt-BR'"
        )
    help_url = ck.get(table, path, "help_url", str, "")
    for problem in help_url_problems(help_url):
        ck.add((*path, "help_url"), problem)
    default = _entry(ck, table.get("default"), (*path, "default"))
    if default.external is None:
        ck.add((*path, "default", "external"), "missing (required): the text of last resort")
    return TextsConfig(
        default=default,
        default_language=language,
        internal_networks=_networks(ck, table, path),
        help_url=help_url,
        reason=_keyed(ck, table, path, "reason", _reason_key),
        enhanced=_keyed(ck, table, path, "enhanced", _enhanced_key),
        code=_keyed(ck, table, path, "code", _code_key),
        translation=shipped_translation(language) if _LANG_TAG.fullmatch(language) else None,
    )


def _networks(ck: _Checker, table: Mapping[str, Any], path: KeyPath) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for i, text in enumerate(ck.strings(table, path, "internal_networks")):
        try:
            out.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            ck.add((*path, "internal_networks", i), f"not a network: {exc}")
    return tuple(out)


def _keyed(
    ck: _Checker,
    table: Mapping[str, Any],
    path: KeyPath,
    name: str,
    parse_key: Callable[[_Checker, str, KeyPath], _K | None],
) -> dict[_K, TextSet]:
    value = table.get(name, {})
    if not isinstance(value, dict):
        ck.add((*path, name), f"expected a table, got {_describe(value)}")
        return {}
    out: dict[_K, TextSet] = {}
    for key, entry in value.items():
        parsed = parse_key(ck, key, (*path, name, key))
        text_set = _entry(ck, entry, (*path, name, key))
        if parsed is not None:
            out[parsed] = text_set
    return out


def _reason_key(ck: _Checker, key: str, path: KeyPath) -> Reason | None:
    return _reason(ck, key, path)


def _enhanced_key(ck: _Checker, key: str, path: KeyPath) -> str | None:
    if _ENHANCED_KEY.fullmatch(key):
        return key
    ck.add(path, f'{key!r} is not an enhanced code like "5.7.1" or "X.7.1"')
    return None


def _code_key(ck: _Checker, key: str, path: KeyPath) -> int | None:
    if key.isascii() and key.isdigit() and len(key) == 3 and 400 <= int(key) <= 599:
        return int(key)
    ck.add(path, f"{key!r} is not a 4xx or 5xx reply code (texts are for failures)")
    return None


def _entry(ck: _Checker, value: object, path: KeyPath, *, with_lang: bool = True) -> TextSet:
    table = ck.table(value, path, _ENTRY_KEYS if with_lang else _ENTRY_KEYS[:2])
    texts: dict[str, str | None] = {}
    for audience in ("external", "internal"):
        text = ck.get(table, path, audience, str, None) if audience in table else None
        for problem in template_problems(text) if text is not None else []:
            ck.add((*path, audience), problem)
        texts[audience] = text
    if isinstance(value, dict) and not value:
        ck.add(path, "empty: give an external and/or an internal text")
    lang: dict[str, TextSet] = {}
    for tag, sub in ck.table(table.get("lang", {}), (*path, "lang"), None).items():
        if not _LANG_TAG.fullmatch(tag):
            ck.add((*path, "lang", tag), f"{tag!r} is not a language tag like 'en' or 'pt-BR'")
        lang[tag] = _entry(ck, sub, (*path, "lang", tag), with_lang=False)
    return TextSet(texts["external"], texts["internal"], lang)


def _banner(ck: _Checker, table: Mapping[str, Any]) -> BannerConfig:
    path: KeyPath = ("banner",)
    greeting = ck.get(table, path, "greeting", str, "{hostname}")
    goodbye = ck.get(table, path, "goodbye", str, "Bye")
    for key, text, code in (("greeting", greeting, 220), ("goodbye", goodbye, 221)):
        for problem in template_problems(text, BANNER_PLACEHOLDERS, code=code):
            ck.add((*path, key), problem)
    if not greeting.lstrip().startswith("{hostname}"):
        ck.add(
            (*path, "greeting"),
            "must start with {hostname}: a 220 greeting names the server first (RFC 5321 "
            "4.2; Postfix's smtpd_banner must start with $myhostname)",
        )
    return BannerConfig(greeting, goodbye)


# --- [bounce] -----------------------------------------------------------------------------

#: A plain mail address (no display name): what a bounce tells people to write to.
_MAIL_ADDRESS = re.compile(r"[A-Za-z0-9.!#%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_HTTP_URL = re.compile(r"https?://[^\s/$.?#][^\s]*", re.IGNORECASE)


def _bounce(ck: _Checker, table: Mapping[str, Any]) -> BounceConfig:
    path: KeyPath = ("bounce",)
    language = ck.get(table, path, "language", str, "en")
    if language not in LANGUAGES:
        ck.add((*path, "language"), _unknown("language", language, LANGUAGES) + _SHIPPED)
        language = "en"
    contact = ck.get(table, path, "contact", str, "")
    if contact and not (contact.isascii() and _MAIL_ADDRESS.fullmatch(contact)):
        ck.add(
            (*path, "contact"),
            f'{contact!r} is not a mail address like help@your.domain ("" names '
            '"your mail administrator" instead)',
        )
    help_url = ck.get(table, path, "help_url", str, "")
    if help_url and not (help_url.isascii() and _HTTP_URL.fullmatch(help_url)):
        ck.add((*path, "help_url"), f"{help_url!r} is not an http:// or https:// link")
    templates: dict[str, dict[str, str]] = {}
    for name in TEMPLATES:
        if name not in table:
            continue
        spec = ck.table(table[name], (*path, name), TEMPLATE_KEYS)
        templates[name] = {}
        for key, value in spec.items():
            if isinstance(value, str):
                templates[name][key] = value
            else:
                ck.add((*path, name, key), f"expected a string, got {_describe(value)}")
    config = BounceConfig(language, contact, help_url, templates)
    try:
        words = bounce_words(language)
    except ConfigError as exc:  # a shipped file edited by hand, or a rule added untranslated
        shipped = f"smtp_policy/data/i18n/{language}.toml"
        for problem in exc.problems:
            _, _, what = problem.partition(": ")
            ck.add((*path, "language"), f"the shipped texts ({shipped}) are incomplete: {what}")
        return config
    try:
        bounce_file(config, words)
    except ConfigError as exc:
        for problem in exc.problems:
            where, _, message = problem.partition(": ")
            ck.add(tuple(where.split(".")), message)
    return config


_SHIPPED = f" (bounces are written in {', '.join(LANGUAGES)})"
