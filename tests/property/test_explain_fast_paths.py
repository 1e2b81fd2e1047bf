"""The fast paths of ``explain --jsonl`` give exactly what the plain ones give."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.core.classify import classify
from smtp_policy.core.explain import (
    explain,
    explain_text,
    explanation_json,
    forget_explanations,
)
from smtp_policy.core.model import Explanation
from smtp_policy.core.parse import parse_reply
from smtp_policy.core.sanitize import json_text
from smtp_policy.data import default_knowledge

KB = default_knowledge()
CORPUS = Path(__file__).resolve().parents[1] / "corpus"
SEEDS = [
    json.loads(line)["reply"]
    for name in ("replies.jsonl", "holdout.jsonl")
    for line in (CORPUS / name).read_text().splitlines()
    if line.strip()
]
SEEDS += [s for rule in KB.rules for s in rule.samples]
SEEDS += [s for info in KB.basic.values() for s in info.samples]

#: Text JSON escapes, or json_text does after it: quotes, controls, DEL, C1, separators,
#: lone surrogates (an undecodable byte read with surrogateescape), non-ASCII letters.
awkward = st.text(
    st.sampled_from(
        ['"', "\\", "\x00", "\n", "\x1b", "\x7f", "\x85", "\u2028", "\udcff", "é", "a"]
    ),
    max_size=8,
)


@given(
    st.one_of(
        st.sampled_from(SEEDS),
        st.builds(lambda seed, extra: seed + extra, st.sampled_from(SEEDS), awkward),
        st.builds(lambda extra, seed: extra + seed, awkward, st.sampled_from(SEEDS)),
        st.text(max_size=300),
    )
)
@settings(max_examples=600, deadline=None)
def test_explanation_json_is_json_text_of_to_dict(text: str) -> None:
    explanation = explain_text(text, KB)
    assert explanation_json(explanation) == json_text(explanation.to_dict())


def test_every_seed_is_encoded_the_same() -> None:
    for text in SEEDS:
        explanation = explain_text(text, KB)
        assert explanation_json(explanation) == json_text(explanation.to_dict()), text


def _worded_cold(text: str) -> Explanation:
    forget_explanations()
    return explain(classify(parse_reply(text, KB.codebook), KB), KB)


@given(st.lists(st.sampled_from(SEEDS), min_size=2, max_size=30), st.text(max_size=100))
@settings(max_examples=200, deadline=None)
def test_remembered_words_are_the_words_worked_out_afresh(seeds: list[str], text: str) -> None:
    """explain() words each (codes, class, reason, rule) once; another reply with the same
    ones gets what working it out from nothing gives."""
    warm = [explain(classify(parse_reply(t, KB.codebook), KB), KB) for t in [*seeds, text]]
    for t, explanation in zip([*seeds, text], warm, strict=True):
        assert explanation == _worded_cold(t)


PHRASES = sorted({p for rule in KB.rules for p in rule.phrases})


def _candidates_one_by_one(text: str) -> list[tuple[str, str]]:
    """What PhraseIndex.candidates finds, worked out the plain way: the longest phrase at
    each word start, in order, each followed by every other phrase inside it."""
    found: dict[str, None] = {}
    for m in KB.index._regex.finditer(text):
        phrase = m.group(1)
        if phrase not in found:
            found[phrase] = None
            for inner in PHRASES:
                if inner != phrase and inner in phrase:
                    found.setdefault(inner, None)
    by_phrase: dict[str, list[str]] = {}
    for rule in KB.rules:
        for phrase in rule.phrases:
            by_phrase.setdefault(phrase, []).append(rule.id)
    return [(p, rule_id) for p in found for rule_id in by_phrase[p]]


@given(
    st.lists(
        st.one_of(st.sampled_from(PHRASES), st.sampled_from([" ", "x", "-", ".", "anti", "9"])),
        max_size=12,
    )
)
@settings(max_examples=400, deadline=None)
def test_phrase_candidates_are_the_plain_ones(parts: list[str]) -> None:
    text = "".join(parts)
    found = [(phrase, rule.id) for phrase, rule in KB.index.candidates(text)]
    assert found == _candidates_one_by_one(text)
