"""The texts of bounces, one TOML file per language (``<tag>.toml``; see ../README.md)."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources

from smtp_policy.core.bounce import BounceWords, words_from_table

#: The languages a bounce can be written in (``[bounce] language``).
LANGUAGES = ("en", "de", "fr")


@cache
def bounce_words(language: str) -> BounceWords:
    """A shipped language's words, loaded and checked once per process.

    Raises ValueError for a language that is not shipped (check-config refuses it first).
    """
    if language not in LANGUAGES:
        raise ValueError(f"no bounce texts in {language!r} (there are: {', '.join(LANGUAGES)})")
    raw = (resources.files("smtp_policy") / "data" / "i18n" / f"{language}.toml").read_text("utf-8")
    return words_from_table(language, tomllib.loads(raw))
