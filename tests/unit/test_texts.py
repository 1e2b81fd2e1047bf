"""Reply texts: lookup order, audience, language, placeholders and the sanitizer."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_policy.config import ConfigSource, default_source, validate
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.explain import explain_text
from smtp_policy.core.model import (
    Actor,
    Classification,
    EnhancedCode,
    Explanation,
    Reason,
    Reply,
    ReplyClass,
    ReplyForm,
)
from smtp_policy.core.sanitize import MAX_LINE_OCTETS, MAX_LINES
from smtp_policy.core.texts import (
    BANNER_PLACEHOLDERS,
    PLACEHOLDERS,
    TextsConfig,
    TextSet,
    audience_of,
    help_url_problems,
    render_reply_text,
    render_rule_text,
    render_template,
    reply_values,
    select_template,
    template_problems,
)
from smtp_policy.data import default_knowledge

INTERNAL = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


def explanation(
    *,
    code: int | None = 550,
    enhanced: str | None = "5.1.1",
    reason: Reason | None = Reason.USER_UNKNOWN,
    help_url: str | None = None,
    summary: str = "The recipient's mailbox does not exist",
    action: str = "Check the address.",
) -> Explanation:
    """An Explanation built directly from the model (no knowledge base needed)."""
    enh = EnhancedCode.parse(enhanced) if enhanced else None
    reply = Reply(
        raw=f"{code} {enhanced} User unknown",
        code=code,
        enhanced=enh,
        text="User unknown",
        form=ReplyForm.SMTP,
    )
    classification = Classification(reply, ReplyClass.PERMANENT, reason, help_url=help_url)
    return Explanation(
        classification, summary, "The address is not known there.", action, Actor.SENDER
    )


def texts(**overrides: object) -> TextsConfig:
    """A TextsConfig with one distinguishable text at every lookup level."""
    base: dict[str, object] = {
        "default": TextSet(external="default-ext", internal="default-int"),
        "internal_networks": INTERNAL,
        "enhanced": {
            "5.1.1": TextSet(external="enhanced-exact"),
            "X.1.1": TextSet(external="enhanced-any-class"),
        },
        "code": {550: TextSet(external="code-550")},
        "reason": {Reason.USER_UNKNOWN: TextSet(external="reason-ext", internal="reason-int")},
    }
    base.update(overrides)
    return TextsConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        pytest.param((), "enhanced-exact", id="enhanced-exact-first"),
        pytest.param(("5.1.1",), "enhanced-any-class", id="then-X.s.d"),
        pytest.param(("5.1.1", "X.1.1"), "code-550", id="then-code"),
        pytest.param(("5.1.1", "X.1.1", "code"), "reason-ext", id="then-reason"),
        pytest.param(("5.1.1", "X.1.1", "code", "reason"), "default-ext", id="then-default"),
    ],
)
def test_lookup_order(drop: tuple[str, ...], expected: str) -> None:
    """Enhanced (exact, then any class), then code, then reason, then default."""
    t = texts()
    enhanced = {k: v for k, v in t.enhanced.items() if k not in drop}
    code = {} if "code" in drop else t.code
    reason = {} if "reason" in drop else t.reason
    t = texts(enhanced=enhanced, code=code, reason=reason)
    assert select_template(t, explanation(), "external") == expected


def test_an_entry_without_the_audience_text_is_skipped() -> None:
    """An internal-only entry does not answer the internet; the next entry does."""
    t = texts(enhanced={"5.1.1": TextSet(internal="enh-int")}, code={})
    assert select_template(t, explanation(), "external") == "reason-ext"
    assert select_template(t, explanation(), "internal") == "enh-int"


def test_internal_falls_back_to_the_same_entry_external() -> None:
    """Internal readers get the most specific entry's external text before a vaguer entry."""
    assert select_template(texts(), explanation(), "internal") == "enhanced-exact"
    t = texts(enhanced={}, code={})
    assert select_template(t, explanation(), "internal") == "reason-int"


def test_reply_without_codes_or_reason_uses_default() -> None:
    """A reply with nothing to look up gets the default entry."""
    e = explanation(code=None, enhanced=None, reason=None)
    assert select_template(texts(), e, "external") == "default-ext"
    assert select_template(texts(), e, "internal") == "default-int"


def test_language_translation_is_preferred() -> None:
    """lang.<default_language> wins over the untagged text; a missing one falls back."""
    entry = TextSet(
        external="Mailbox unknown",
        internal="No such colleague",
        lang={"de": TextSet(external="Postfach unbekannt")},
    )
    t = texts(enhanced={}, code={}, reason={Reason.USER_UNKNOWN: entry}, default_language="de")
    assert select_template(t, explanation(), "external") == "Postfach unbekannt"
    assert select_template(t, explanation(), "internal") == "No such colleague"
    assert select_template(t, explanation(), "external", language="fr") == "Mailbox unknown"


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ("10.1.2.3", "internal"),
        ("2001:db8::5", "internal"),
        ("IPv6:2001:db8::5", "internal"),
        ("::ffff:10.0.0.1", "internal"),
        ("192.0.2.1", "external"),
        ("unknown", "external"),
        ("", "external"),
    ],
)
def test_audience_of(client: str, expected: str) -> None:
    """Clients inside internal_networks are internal; everything else, garbage too, external."""
    assert audience_of(client, texts()) == expected


def test_every_placeholder_is_filled() -> None:
    """All fourteen placeholders render; explanation values cannot be overridden by context."""
    template = " | ".join(f"{{{name}}}" for name in sorted(PLACEHOLDERS))
    context = {
        "recipient": "rcpt@example.com",
        "sender": "from@example.org",
        "client_addr": "192.0.2.1",
        "client_name": "c.example.org",
        "queue_id": "QID1",
        "hostname": "mx.example.com",
        "date": "Mon, 1 Jan 2024",
        "code": "999",  # not a context key: ignored
        "unknown_key": "ignored",
    }
    t = texts(help_url="https://h.example/{reason}/{code}")
    (line,) = render_template(template, reply_values(t, explanation(), context))
    assert line == (
        "Check the address. | 192.0.2.1 | c.example.org | 550 | Mon, 1 Jan 2024 | 5.1.1 | "
        "The address is not known there. | https://h.example/user_unknown/550 | "
        "mx.example.com | QID1 | user_unknown | rcpt@example.com | from@example.org | "
        "The recipient's mailbox does not exist"
    )


def test_provider_help_url_wins_over_ours() -> None:
    """A reply from a known provider links the provider's page; others link ours."""
    t = texts(help_url="https://help.example.com/#{reason}")
    ours = reply_values(t, explanation(), {})["help_url"]
    theirs = reply_values(t, explanation(help_url="https://support.google.com/x"), {})
    assert ours == "https://help.example.com/#user_unknown"
    assert theirs["help_url"] == "https://support.google.com/x"


def test_a_line_whose_placeholders_are_all_empty_is_left_out() -> None:
    """No help URL: the "More information" line disappears instead of dangling."""
    t = texts(
        enhanced={},
        code={},
        reason={},
        default=TextSet(external="{summary}. {action}\nMore information: {help_url}"),
    )
    e = explanation()
    assert render_reply_text(t, e, {}, "external") == [
        "The recipient's mailbox does not exist. Check the address."
    ]
    t2 = TextsConfig(default=t.default, help_url="https://help.example.com/")
    assert render_reply_text(t2, e, {}, "external")[-1] == (
        "More information: https://help.example.com/"
    )


def test_literal_braces() -> None:
    """{{ and }} are literal braces."""
    assert render_template("{{code}} is {code}", {"code": "550"}) == ["{code} is 550"]


def test_render_reply_text_picks_by_audience() -> None:
    """render_reply_text combines lookup, audience and rendering."""
    t = texts(enhanced={}, code={})
    e = explanation()
    assert render_reply_text(t, e, {}, audience_of("10.0.0.1", t)) == ["reason-int"]
    assert render_reply_text(t, e, {}, audience_of("192.0.2.1", t)) == ["reason-ext"]


def test_render_rule_text_prefers_the_rules_own_text() -> None:
    """A rule's text replaces the [texts] lookup; without one the lookup decides."""
    t = texts()
    e = explanation()
    assert render_rule_text("No mail from {sender}", t, e, {"sender": "a@b"}, "external") == [
        "No mail from a@b"
    ]
    assert render_rule_text(None, t, e, {}, "external") == ["enhanced-exact"]


@pytest.mark.parametrize(
    "recipient",
    [
        "evil@example.com\r\n250 OK",
        "evil@example.com\n550 5.7.1 injected",
        "evil\x00@example.com\r",
        "100%@example.com%s%n",
        "ünïcödé@exämple.com\u2028next",
    ],
)
def test_context_values_cannot_break_lines(recipient: str) -> None:
    """A recipient with CR/LF/NUL/% never adds a line or a control character."""
    t = texts(enhanced={}, code={}, reason={}, default=TextSet(external="No {recipient}.\nBye"))
    lines = render_reply_text(t, explanation(), {"recipient": recipient}, "external")
    assert len(lines) == 2
    assert lines[1] == "Bye"
    assert not any(ch in line for line in lines for ch in "\r\n\x00")
    assert all(line.isascii() and line.isprintable() for line in lines)
    if "%" in recipient:
        assert "%" in lines[0]  # legal here; milter_line doubles it for libmilter


def test_long_values_wrap_within_512_octets() -> None:
    """A very long value wraps; every line fits 512 octets with the widest prefix."""
    lines = render_template("{explanation}", {"explanation": "word " * 500})
    assert len(lines) > 1
    assert all(len(f"550-5.999.999 {line}\r\n") <= MAX_LINE_OCTETS for line in lines)


def test_an_unvalidated_unknown_placeholder_is_a_config_error() -> None:
    """Rendering never raises KeyError: an unknown placeholder is a ConfigError."""
    with pytest.raises(ConfigError, match=r"\{rcpt\}"):
        render_template("Hello {rcpt}", {})
    with pytest.raises(ConfigError, match="not allowed"):
        render_template("{summary.__class__}", {})


@pytest.mark.parametrize(
    ("template", "problems"),
    [
        pytest.param("Hello {recipient}", [], id="fine"),
        pytest.param("100% sure, costs $5\tok", [], id="percent-dollar-tab-are-fine"),
        pytest.param("line one\nline two", [], id="line-break-is-fine"),
        pytest.param(
            "a\rb",
            ["contains a carriage return (CR): use a line break for a new reply line"],
            id="cr",
        ),
        pytest.param("a\x00b", ["contains a NUL character"], id="nul"),
        pytest.param("a\x1b[31mb", ["contains control character U+001B"], id="escape"),
        pytest.param("a\u202eb", ["contains control character U+202E"], id="bidi-override"),
        pytest.param("No {xyzzy}", ["unknown placeholder {xyzzy}"], id="unknown"),
        pytest.param(
            "No {rcpt}",
            ["unknown placeholder {rcpt} (did you mean {recipient}?)"],
            id="abbreviation",
        ),
        pytest.param(
            "No {recipent}",
            ["unknown placeholder {recipent} (did you mean {recipient}?)"],
            id="did-you-mean",
        ),
        pytest.param(
            "{code!r}",
            ["placeholder {code!r}: conversions and format specs are not allowed"],
            id="conversion",
        ),
        pytest.param(
            "{code:>9}",
            ["placeholder {code:>9}: conversions and format specs are not allowed"],
            id="format-spec",
        ),
        pytest.param(
            "{summary.__class__}", ["unknown placeholder {summary.__class__}"], id="attribute"
        ),
        pytest.param("{}", ["empty placeholder {}: name a value, e.g. {summary}"], id="positional"),
        pytest.param(
            "oops {code", ["unbalanced brace: write {{ and }} for literal braces"], id="open"
        ),
        pytest.param(
            "ok\noops }",
            ["unbalanced brace (template line 2): write {{ and }} for literal braces"],
            id="close-line-2",
        ),
        pytest.param("", ["renders to nothing: write some text, or leave the key out"], id="empty"),
        pytest.param(
            " \n \t\n", ["renders to nothing: write some text, or leave the key out"], id="blank"
        ),
        pytest.param("\n".join(["x"] * 32), [], id="32-lines"),
        pytest.param(
            "\n".join(["x"] * 33),
            ["renders to 33 reply lines; at most 32 are allowed"],
            id="33-lines",
        ),
    ],
)
def test_template_problems(template: str, problems: list[str]) -> None:
    """Each bad template gets exactly one clear message."""
    assert template_problems(template) == problems


def test_banner_placeholders_are_restricted() -> None:
    """The greeting cannot use reply placeholders; the message lists the usable ones."""
    assert template_problems("{hostname} hi {client_addr}", BANNER_PLACEHOLDERS) == []
    assert template_problems("{hostname} {summary}", BANNER_PLACEHOLDERS) == [
        "placeholder {summary} is not available here "
        "(use {client_addr} {client_name} {date} {hostname})"
    ]


@pytest.mark.parametrize(
    ("url", "problems"),
    [
        ("", []),
        ("https://help.example.com/errors#{reason}", []),
        ("mailto:postmaster@example.com", []),
        ("help.example.com", ["must start with https://, http:// or mailto:"]),
        (
            "https://x.example/{recipient}",
            ["placeholder {recipient} is not available here (use {code} {enhanced} {reason})"],
        ),
        ("https://x.example/a b", ["a URL cannot contain spaces or line breaks"]),
    ],
)
def test_help_url_problems(url: str, problems: list[str]) -> None:
    """help_url is a URL template over code, enhanced and reason."""
    assert help_url_problems(url) == problems


_SAFE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="{}"), max_size=40)
_TEMPLATES = st.lists(
    st.one_of(_SAFE_TEXT, st.sampled_from(sorted(PLACEHOLDERS)).map(lambda p: f"{{{p}}}")),
    max_size=12,
).map("".join)
_VALUES = st.dictionaries(
    st.sampled_from(sorted(PLACEHOLDERS)), st.text(st.characters(codec="utf-8"), max_size=200)
)


@given(template=_TEMPLATES, values=_VALUES)
def test_rendered_lines_are_always_safe(template: str, values: dict[str, str]) -> None:
    """Whatever the template text and values: no CR/LF/NUL, 512 octets with any prefix."""
    lines = render_template(template, values)
    assert 1 <= len(lines) <= MAX_LINES
    for line in lines:
        assert not any(ch in line for ch in "\r\n\x00")
        assert line.isascii() and line.isprintable()
        assert len(f"550-5.7.1 {line}\r\n".encode()) <= MAX_LINE_OCTETS
        assert len(f"550-5.999.999 {line}\r\n".encode()) <= MAX_LINE_OCTETS


@given(template=_TEMPLATES, values=_VALUES, client=st.sampled_from(["10.0.0.1", "192.0.2.1"]))
def test_render_reply_text_is_always_safe(
    template: str, values: dict[str, str], client: str
) -> None:
    """The full path, with random admin text and random session values, stays safe."""
    t = TextsConfig(default=TextSet(external=template, internal=template), help_url="")
    e = explanation(summary=values.get("summary", "s"), action=values.get("action", "a"))
    lines = render_reply_text(t, e, values, audience_of(client, t))
    assert all(
        not any(ch in line for ch in "\r\n\x00")
        and len(f"550-5.7.1 {line}\r\n".encode()) <= MAX_LINE_OCTETS
        for line in lines
    )


_HELO = "504 5.5.2 <ws42>: Helo command rejected: need fully-qualified hostname"


def _texts_in(language: str) -> TextsConfig:
    source = ConfigSource(
        "user.toml", f'[texts]\ndefault_language = "{language}"\nhelp_url = "https://h.example/"\n'
    )
    config, problems = validate([default_source(), source])
    assert config is not None and not problems
    return config.texts


@pytest.mark.parametrize(
    ("language", "start", "more"),
    [
        (
            "de",
            "Der Server hat den HELO/EHLO-Namen des Absenders abgelehnt: er ist kein "
            "vollstaendiger Hostname.",
            "Weitere Informationen: https://h.example/",
        ),
        ("fr-CA", "Le serveur a refuse le nom HELO/EHLO de l'expediteur", "Plus d'informations :"),
        ("en", "The server refused the client's HELO/EHLO name", "More information:"),
        ("pt-BR", "The server refused the client's HELO/EHLO name", "More information:"),
    ],
)
def test_a_shipped_default_language_speaks_in_summary_and_action(
    language: str, start: str, more: str
) -> None:
    explanation = explain_text(_HELO, default_knowledge())
    assert explanation.classification.rule == "postfix.helo_not_fqdn"
    lines = render_reply_text(_texts_in(language), explanation, {}, "external")
    assert lines[0].startswith(start)
    assert lines[-1].startswith(more)


def test_a_german_reply_writes_umlauts_as_germans_do_in_ascii() -> None:
    explanation = explain_text("550 5.1.1 <x@example.org>: User unknown", default_knowledge())
    text = " ".join(render_reply_text(_texts_in("de"), explanation, {}, "external"))
    assert text.isascii()
    assert not any(word in text for word in ("konnen", "fur ", "Empfanger"))
