"""Warnings about a configuration that is valid but says what its author did not mean.

Warnings never stop anything: ``check-config`` prints them and exits 0, the daemons log them
at start. Two kinds, both over the merged TOML (so that each names its key and line):

* an example domain (example.com, example.org, example.net or a subdomain, RFC 2606) in a
  reply text, the help link, the banner or ``[bounce]``: a copied example that senders would
  read;
* a session placeholder that the hook rendering the text never fills. The reply's own
  placeholders ({code} {enhanced} {reason} {summary} {explanation} {action} {help_url}) are
  filled everywhere; the session ones (``texts.CONTEXT_KEYS``) only where :data:`SESSION_FILLED`
  says, and in a rule's reply only from the stage that knows them. config/config.toml shows
  the same table to admins.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smtp_policy.config.model import KeyPath
from smtp_policy.core.stages import ORDER, Stage
from smtp_policy.core.texts import AUDIENCES, CONTEXT_KEYS

#: A domain reserved for documentation (RFC 2606), or a name under one.
EXAMPLE_DOMAIN = re.compile(
    r"(?<![\w.-])(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*example\.(?:com|org|net)(?![\w-])",
    re.IGNORECASE,
)

#: The session placeholders each hook fills (the reply's own ones are filled by every hook).
#: Reject footers and DSN texts come from the maps server: Postfix sends it only the reply.
SESSION_FILLED: Mapping[str, frozenset[str]] = {
    "reject footers": frozenset(),
    "DSN texts": frozenset(),
    "milter": CONTEXT_KEYS,
    "policy service": CONTEXT_KEYS - {"hostname", "date"},
    "proxy": CONTEXT_KEYS - {"queue_id"},
}
#: The hooks that render ``[texts]`` with no session, by audience (milter, policy service and
#: proxy render them too, with one).
_SESSIONLESS = {"external": ("reject footers", "DSN texts"), "internal": ("DSN texts",)}

_FORMATTER = string.Formatter()


@dataclass(frozen=True, slots=True)
class Advice:
    """One warning about the key at ``path``; ``source`` None: the file that last set it."""

    path: KeyPath
    message: str
    source: int | None = None


def advise(data: Mapping[str, Any], rules: Sequence[tuple[int, int, Any]]) -> list[Advice]:
    """Every warning about the merged ``data`` and the ``[[rules]]`` (source, index, table)."""
    out: list[Advice] = []
    texts = _table(data.get("texts"))
    for path, audience, text in _texts_templates(texts):
        out += _domain_advice(path, text)
        hooks = _SESSIONLESS[audience]
        unfilled = CONTEXT_KEYS - frozenset.union(*(SESSION_FILLED[hook] for hook in hooks))
        where = " and ".join(hooks)
        out += [
            Advice(path, f"{{{name}}} is always empty in {where}: {_NO_SESSION}")
            for name in placeholders(text)
            if name in unfilled
        ]
    help_url = texts.get("help_url")
    if isinstance(help_url, str):
        out += _domain_advice(("texts", "help_url"), help_url)
    banner = _table(data.get("banner"))
    for key in ("greeting", "goodbye"):
        value = banner.get(key)
        if isinstance(value, str):
            out += _domain_advice(("banner", key), value)
    out += _bounce_advice(_table(data.get("bounce")))
    for source, index, rule in rules:
        out += _rule_advice(source, index, _table(rule))
    return out


def _bounce_advice(bounce: Mapping[str, Any]) -> list[Advice]:
    """Example domains in ``[bounce]``: its contact, help link and wording overrides."""
    out: list[Advice] = []
    for key in ("contact", "help_url"):
        value = bounce.get(key)
        if isinstance(value, str):
            out += _domain_advice(("bounce", key), value)
    for name, spec in bounce.items():
        for key, value in _table(spec).items():
            if isinstance(value, str):
                out += _domain_advice(("bounce", name, key), value)
    return out


_NO_SESSION = (
    "Postfix gives the maps server only the reply (a line whose placeholders are all empty "
    "is left out)"
)


def placeholders(template: str) -> list[str]:
    """The placeholder names in ``template``, in order, each once (bad lines are skipped)."""
    names: list[str] = []
    for line in template.split("\n"):
        try:
            parsed = list(_FORMATTER.parse(line))
        except ValueError:
            continue
        names += [name for _, name, _, _ in parsed if name and name not in names]
    return names


def example_domains(text: str) -> list[str]:
    """The example domains (RFC 2606) ``text`` names, each once, lowercased."""
    found: list[str] = []
    for match in EXAMPLE_DOMAIN.finditer(text):
        domain = match.group(0).lower()
        if domain not in found:
            found.append(domain)
    return found


def session_gaps(stage: Stage) -> dict[str, str]:
    """The session placeholders a rule's reply at ``stage`` may leave empty: name -> warning."""
    at = ORDER.index(stage)
    where = f"at stage {stage.value}"
    gaps: dict[str, str] = {}
    if at < ORDER.index(Stage.MAIL):
        gaps["sender"] = f"is always empty {where}: no sender is known before MAIL FROM"
        gaps["queue_id"] = f"is always empty {where}: no MTA has a queue id before MAIL FROM"
    elif stage is Stage.MAIL:
        gaps["queue_id"] = (
            f"is empty {where} with Postfix: it opens the queue file at the first accepted "
            "recipient (Sendmail at MAIL FROM)"
        )
    if at < ORDER.index(Stage.RCPT):
        gaps["recipient"] = f"is always empty {where}: no recipient is known before RCPT TO"
    elif stage is not Stage.RCPT:
        gaps["recipient"] = (
            f"is empty {where} when the milter sends this reply: a message may have many "
            "recipients (only rcpt rules name one)"
        )
    for name in sorted(CONTEXT_KEYS - SESSION_FILLED["policy service"]):
        gaps.setdefault(
            name, "is empty when the policy service sends this reply (the milter fills it)"
        )
    return gaps


def _rule_advice(source: int, index: int, rule: Mapping[str, Any]) -> list[Advice]:
    text = rule.get("text")
    if not isinstance(text, str):
        return []
    path: KeyPath = ("rules", index, "text")
    out = [Advice(a.path, a.message, source) for a in _domain_advice(path, text)]
    try:
        stage = Stage(str(rule.get("stage", "")))
    except ValueError:
        return out
    gaps = session_gaps(stage)
    out += [
        Advice(path, f"{{{name}}} {gaps[name]}", source)
        for name in placeholders(text)
        if name in gaps
    ]
    return out


def _domain_advice(path: KeyPath, text: str) -> list[Advice]:
    domains = example_domains(text)
    if not domains:
        return []
    names = ", ".join(domains)
    return [
        Advice(
            path,
            f"{names}: an example domain (RFC 2606), not yours, in what people read: "
            "write your own, or leave the key out",
        )
    ]


def _texts_templates(texts: Mapping[str, Any]) -> Iterator[tuple[KeyPath, str, str]]:
    """(path, audience, template) for every text in ``[texts]``."""
    yield from _entry_templates(texts.get("default"), ("texts", "default"))
    for group in ("reason", "enhanced", "code"):
        for key, entry in _table(texts.get(group)).items():
            yield from _entry_templates(entry, ("texts", group, key))


def _entry_templates(entry: object, path: KeyPath) -> Iterator[tuple[KeyPath, str, str]]:
    table = _table(entry)
    for audience in AUDIENCES:
        text = table.get(audience)
        if isinstance(text, str):
            yield (*path, audience), audience, text
    for tag, translation in _table(table.get("lang")).items():
        yield from _entry_templates(translation, (*path, "lang", tag))


def _table(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
