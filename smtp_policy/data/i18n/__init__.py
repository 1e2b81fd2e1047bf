"""The texts of bounces, one TOML file per language (``<tag>.toml``; see ../README.md)."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources

from smtp_policy.core.bounce import BounceWords, words_from_table
from smtp_policy.core.texts import RULE_KEYS, Translation
from smtp_policy.data import default_knowledge

#: The languages a bounce can be written in (``[bounce] language``).
LANGUAGES = ("en", "de", "fr")


@cache
def bounce_words(language: str) -> BounceWords:
    """A shipped language's words, loaded and checked once per process.

    Every knowledge rule's own words (``RULE_KEYS``) must be translated. Raises ValueError
    for a language that is not shipped (check-config refuses it first).
    """
    if language not in LANGUAGES:
        raise ValueError(f"no bounce texts in {language!r} (there are: {', '.join(LANGUAGES)})")
    raw = (resources.files("smtp_policy") / "data" / "i18n" / f"{language}.toml").read_text("utf-8")
    own = {
        rule.id: frozenset(key for key in RULE_KEYS if getattr(rule, key))
        for rule in default_knowledge().rules
    }
    return words_from_table(language, tomllib.loads(raw), own)


def shipped_translation(language_tag: str) -> Translation | None:
    """The reasons' and rules' words for ``[texts] default_language`` (``de``, ``fr-CA``...),
    or None where English is meant or the language is not shipped."""
    primary = language_tag.split("-", 1)[0].lower()
    if primary == "en" or primary not in LANGUAGES:
        return None
    words = bounce_words(primary)
    return Translation(primary, words.reasons, words.rules)
