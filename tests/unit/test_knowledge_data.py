"""The shipped knowledge: complete, consistent, and right on its own samples."""

from __future__ import annotations

import pytest

from smtp_policy.core.explain import explain_text
from smtp_policy.core.knowledge import KnowledgeBase, normalize
from smtp_policy.core.model import Reason, ReplyClass
from smtp_policy.data import default_knowledge

#: Every code the seed guide (a third-party text on SMTP reply codes, not in the repository)
#: discusses: the test's own data.
SEED_CODES = (
    101,
    111,
    211,
    214,
    220,
    221,
    250,
    251,
    252,
    354,
    420,
    421,
    422,
    431,
    432,
    441,
    442,
    446,
    447,
    449,
    450,
    451,
    452,
    465,
    471,
    500,
    501,
    502,
    503,
    504,
    510,
    511,
    512,
    513,
    523,
    550,
    551,
    552,
    553,
    554,
)
RFC5321_CODES = (
    211,
    214,
    220,
    221,
    250,
    251,
    252,
    354,
    421,
    450,
    451,
    452,
    455,
    500,
    501,
    502,
    503,
    504,
    550,
    551,
    552,
    553,
    554,
    555,
)

#: The IANA "SMTP Enhanced Status Codes" registry (RFC 3463 and the RFCs that extend it).
REGISTRY = (
    "X.0.0",
    *(f"X.1.{d}" for d in range(11)),
    *(f"X.2.{d}" for d in range(5)),
    *(f"X.3.{d}" for d in range(7)),
    *(f"X.4.{d}" for d in range(8)),
    *(f"X.5.{d}" for d in range(7)),
    *(f"X.6.{d}" for d in range(10)),
    *(f"X.7.{d}" for d in range(31)),
)


@pytest.fixture(name="kb", scope="module")
def _kb() -> KnowledgeBase:
    return default_knowledge()


def test_every_seed_code_is_known(kb: KnowledgeBase) -> None:
    """Each code of the seed guide, and each of RFC 5321, has an entry."""
    assert sorted(set(SEED_CODES + RFC5321_CODES) - set(kb.basic)) == []


@pytest.mark.parametrize("code", SEED_CODES)
def test_every_seed_code_explains(code: int) -> None:
    """A bare seed code explains with the class of its first digit, a reason and a meaning."""
    result = explain_text(str(code), default_knowledge())
    expected = {1: "transient", 2: "success", 3: "intermediate", 4: "transient", 5: "permanent"}
    assert result.classification.klass.value == expected[code // 100]
    assert result.code_meaning
    assert result.summary
    if code // 100 in (1, 4, 5):
        assert result.classification.reason is not None
        assert result.classification.reason is not Reason.UNDEFINED
        assert result.action


def test_the_whole_registry_is_known(kb: KnowledgeBase) -> None:
    """Every registry code has an entry with a title and a meaning."""
    assert sorted(set(REGISTRY) - set(kb.enhanced)) == []
    assert set(kb.enhanced_classes) == {2, 4, 5}


@pytest.mark.parametrize("key", REGISTRY)
def test_every_registry_code_explains(key: str, kb: KnowledgeBase) -> None:
    """Each registry code, in each class it allows, explains with its meaning and class."""
    info = kb.enhanced[key]
    for klass in sorted(info.classes):
        result = explain_text(key.replace("X", str(klass), 1), kb)
        assert result.enhanced_meaning is not None
        assert result.enhanced_meaning.startswith(info.title)
        want = {2: ReplyClass.SUCCESS, 4: ReplyClass.TRANSIENT, 5: ReplyClass.PERMANENT}[klass]
        assert result.classification.klass is want


def _rule_samples() -> list[tuple[str, str | None, str]]:
    kb = default_knowledge()
    return [(r.id, r.reason.value if r.reason else None, s) for r in kb.rules for s in r.samples]


@pytest.mark.parametrize(("rule_id", "reason", "sample"), _rule_samples())
def test_every_rule_sample_yields_the_rule_reason(
    rule_id: str, reason: str | None, sample: str
) -> None:
    """Each sample beside a rule classifies to that rule's reason (success texts: none)."""
    result = explain_text(sample, default_knowledge())
    got = result.classification
    if reason is None:
        assert got.klass is ReplyClass.SUCCESS, f"{rule_id}: {sample!r} is {got.klass}"
        return
    assert got.reason is not None, f"{rule_id}: no reason for {sample!r}"
    assert got.reason.value == reason, f"{rule_id}: {sample!r} gave {got.reason} via {got.rule}"


def test_every_rule_matches_one_of_its_samples(kb: KnowledgeBase) -> None:
    """Each phrase of each rule occurs in one of its samples: no rule is dead data."""
    dead = []
    for rule in kb.rules:
        texts = [normalize(s) for s in rule.samples]
        dead += [f"{rule.id}: {p!r}" for p in rule.phrases if not any(p in t for t in texts)]
    assert dead == []


def test_basic_code_samples_have_their_class(kb: KnowledgeBase) -> None:
    """Each basic code's samples classify to the class of that code."""
    wrong = []
    for info in kb.basic.values():
        for sample in info.samples:
            got = explain_text(sample, kb).classification.klass
            if got is not info.klass:
                wrong.append((info.code, sample, got))
    assert wrong == []


@pytest.mark.parametrize(
    ("reply", "klass", "reason"),
    [
        pytest.param(
            "550 5.1.1 Too many recipients this hour, try later",
            "permanent",
            "rate_limited",
            id="text-beats-enhanced",
        ),
        pytest.param(
            "554 delivery error: dd This user doesn't have an account",
            "permanent",
            "user_unknown",
            id="text-beats-generic-554",
        ),
        pytest.param(
            "550 4.7.1 Temporarily rejected", "permanent", None, id="5xx-with-4xx-enhanced"
        ),
        pytest.param("Mailbox is inactive", None, "suspend", id="seed-phrase-inactive"),
        pytest.param("250 2.0.0 Ok: queued as 7EE668039", "success", None, id="success"),
        pytest.param(
            "354 End data with <CR><LF>.<CR><LF>", "intermediate", None, id="intermediate"
        ),
        pytest.param("", "unknown", "undefined", id="empty"),
    ],
)
def test_decisions(reply: str, klass: str | None, reason: str | None, kb: KnowledgeBase) -> None:
    """The text decides over generic codes; the basic code decides the class."""
    got = explain_text(reply, kb).classification
    if klass is not None:
        assert got.klass.value == klass
    if reason is not None or klass in ("success", "intermediate"):
        assert (got.reason.value if got.reason else None) == reason


def test_following_addresses_phrase_is_explained(kb: KnowledgeBase) -> None:
    """The seed guide's 'permanent delivery errors' phrase is recognised by a rule."""
    got = explain_text("The following addresses had permanent delivery errors", kb)
    assert got.classification.rule is not None
    assert got.classification.klass is ReplyClass.PERMANENT


def test_every_seed_code_has_a_summary_of_its_own(kb: KnowledgeBase) -> None:
    """Each seed code carries its own summary, said as the usual meaning; no two are alike."""
    summaries = {code: kb.basic[code].summary for code in SEED_CODES}
    assert [code for code, text in summaries.items() if not text] == []
    assert len(set(summaries.values())) == len(SEED_CODES)
    for code, text in summaries.items():
        assert text is not None
        assert text.startswith(f"Code {code} usually means "), text
        assert not text.endswith("."), text


@pytest.mark.parametrize("code", SEED_CODES)
def test_a_bare_seed_code_shows_its_own_summary(code: int, kb: KnowledgeBase) -> None:
    """A bare code is explained with what it usually means, not a reason's certain words."""
    assert explain_text(str(code), kb).summary == kb.basic[code].summary


def test_a_rule_or_an_explicit_enhanced_code_decides_over_the_code_summary(
    kb: KnowledgeBase,
) -> None:
    """The code's summary is shown only when the code alone decided."""
    assert explain_text("550 5.1.1 no", kb).summary == kb.reasons[Reason.USER_UNKNOWN].summary
    ruled = explain_text("554 5.7.1 <smtp@example.com>: Relay access denied", kb)
    assert ruled.classification.rule is not None
    assert ruled.summary != kb.basic[554].summary


#: Words of our sources that mean nothing to a user.
SOURCE_WORDS = ("seed", "guide ", "answersthatwork", ".txt", ".toml", "shared/")


def test_no_code_text_mentions_our_sources(kb: KnowledgeBase) -> None:
    """Titles, meanings and summaries of basic and enhanced codes never cite where facts came from."""
    texts = [t for i in kb.basic.values() for t in (i.title, i.meaning, i.summary or "")]
    texts += [t for i in kb.enhanced.values() for t in (i.title, i.meaning)]
    texts += [t for pair in kb.enhanced_classes.values() for t in pair]
    leaks = [t for t in texts for w in SOURCE_WORDS if w in t.lower()]
    assert leaks == []
