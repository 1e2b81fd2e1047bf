"""Configuration warnings: example domains people would read, placeholders a hook never fills.

Each warning is one line, ``FILE:LINE: key.path: message``, like a problem; a warning never
makes a configuration unusable.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_policy.config import check_config, load_config
from smtp_policy.config.advice import SESSION_FILLED, example_domains, placeholders, session_gaps
from smtp_policy.core.stages import Stage
from smtp_policy.core.texts import CONTEXT_KEYS

NAME = "conf.d/10-test.toml"


def warnings_of(etc: Path, text: str) -> list[str]:
    """The warnings of the defaults plus ``text`` as one admin file; it must have no problem."""
    path = etc / NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    report = check_config(etc_dir=etc)
    assert report.problems == []
    assert report.config is not None
    return report.warnings


# --- example domains ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("https://help.example.com/x#{reason}", ["help.example.com"]),
        ("ask postmaster@example.com", ["example.com"]),
        ("EXAMPLE.ORG and www.Example.Net.", ["example.org", "www.example.net"]),
        ("a.b.example.com, a.b.example.com", ["a.b.example.com"]),
        ("my-example.com notexample.com example.community example.comx", []),
        ("spam.example and example.co.uk", []),
    ],
)
def test_example_domains(text: str, found: list[str]) -> None:
    assert example_domains(text) == found


def test_example_domains_in_texts_help_link_banner_and_rules(tmp_path: Path) -> None:
    text = (
        "[texts]\n"  # 1
        'help_url = "https://help.example.com/errors#{reason}"\n'  # 2
        "[texts.code.554]\n"  # 3
        'external = """The transaction failed.\n'  # 4
        'Write to postmaster@example.org."""\n'  # 5
        "[texts.reason.user_unknown.lang.de]\n"  # 6
        'internal = "Siehe https://intranet.example.net/leute"\n'  # 7
        "[banner]\n"  # 8
        'greeting = "{hostname} ESMTP mail for example.com"\n'  # 9
        'goodbye = "Bye from Example.COM"\n'  # 10
        "[[rules]]\n"  # 11
        'name = "r"\n'  # 12
        'stage = "rcpt"\n'  # 13
        'action = "reject"\n'  # 14
        'text = "See www.example.com/policy"\n'  # 15
    )
    tail = ": an example domain (RFC 2606), not yours, in what people read: write your own, or leave the key out"
    assert warnings_of(tmp_path, text) == [
        f"{NAME}:2: texts.help_url: help.example.com{tail}",
        f"{NAME}:4: texts.code.554.external: example.org{tail}",
        f"{NAME}:7: texts.reason.user_unknown.lang.de.internal: intranet.example.net{tail}",
        f"{NAME}:9: banner.greeting: example.com{tail}",
        f"{NAME}:10: banner.goodbye: example.com{tail}",
        f"{NAME}:15: rules[0].text: www.example.com{tail}",
    ]


def test_a_later_file_that_fixes_the_text_silences_the_warning(tmp_path: Path) -> None:
    """Warnings are about the merged configuration, named in the file that set the key."""
    (tmp_path / "config.toml").write_text('[texts]\nhelp_url = "https://example.com/h"\n')
    assert warnings_of(tmp_path, "") == [
        "config.toml:2: texts.help_url: example.com: an example domain (RFC 2606), not yours, "
        "in what people read: write your own, or leave the key out"
    ]
    assert warnings_of(tmp_path, '[texts]\nhelp_url = "https://help.mx.test/h"\n') == []


# --- placeholders a hook never fills -------------------------------------------------------


def test_session_placeholders_in_texts_are_empty_in_footers_and_dsn(tmp_path: Path) -> None:
    """[texts] reach reject footers (external) and DSN texts: the maps server has no session."""
    text = (
        "[texts.reason.user_unknown]\n"  # 1
        'external = """There is no mailbox {recipient} here.\n'  # 2
        'Reference: {queue_id}"""\n'  # 3
        'internal = "{summary} ({sender} at {date})"\n'  # 4
        "[texts.default]\n"  # 5
        'external = "{summary}. {action} {help_url} {code} {enhanced} {explanation}"\n'  # 6
    )
    why = "Postfix gives the maps server only the reply (a line whose placeholders are all empty is left out)"
    path = "texts.reason.user_unknown"
    assert warnings_of(tmp_path, text) == [
        f"{NAME}:2: {path}.external: {{recipient}} is always empty in reject footers and "
        f"DSN texts: {why}",
        f"{NAME}:2: {path}.external: {{queue_id}} is always empty in reject footers and "
        f"DSN texts: {why}",
        f"{NAME}:4: {path}.internal: {{sender}} is always empty in DSN texts: {why}",
        f"{NAME}:4: {path}.internal: {{date}} is always empty in DSN texts: {why}",
    ]


@pytest.mark.parametrize(
    ("stage", "template", "expected"),
    [
        (
            "connect",
            "{sender} {queue_id} {recipient} {client_addr}",
            [
                "{sender} is always empty at stage connect: no sender is known before MAIL FROM",
                "{queue_id} is always empty at stage connect: no MTA has a queue id before "
                "MAIL FROM",
                "{recipient} is always empty at stage connect: no recipient is known before "
                "RCPT TO",
            ],
        ),
        (
            "mail",
            "{sender} {queue_id} {recipient}",
            [
                "{queue_id} is empty at stage mail with Postfix: it opens the queue file at the "
                "first accepted recipient (Sendmail at MAIL FROM)",
                "{recipient} is always empty at stage mail: no recipient is known before RCPT TO",
            ],
        ),
        ("rcpt", "{sender} {recipient} {queue_id} {client_name}", []),
        (
            "eom",
            "{recipient} {queue_id}",
            [
                "{recipient} is empty at stage eom when the milter sends this reply: a message "
                "may have many recipients (only rcpt rules name one)"
            ],
        ),
        (
            "data",
            "{hostname} {date}",
            [
                "{hostname} is empty when the policy service sends this reply (the milter fills it)",
                "{date} is empty when the policy service sends this reply (the milter fills it)",
            ],
        ),
    ],
)
def test_rule_text_placeholders_its_stage_cannot_know(
    tmp_path: Path, stage: str, template: str, expected: list[str]
) -> None:
    text = (
        '[[rules]]\nname = "early"\nstage = "rcpt"\naction = "reject"\n'  # 1-4: no text
        f'[[rules]]\nname = "r"\nstage = "{stage}"\naction = "tempfail"\n'  # 5-8
        f'text = "{template}"\n'  # 9
    )
    assert warnings_of(tmp_path, text) == [f"{NAME}:9: rules[1].text: {w}" for w in expected]


def test_a_rule_redefined_in_a_later_file_warns_there(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[[rules]]\nname = "r"\nstage = "mail"\naction = "reject"\ntext = "{summary}"\n'
    )
    assert warnings_of(
        tmp_path, '\n[[rules]]\nname = "r"\nstage = "helo"\naction = "reject"\ntext = "{sender}"\n'
    ) == [
        f"{NAME}:6: rules[0].text: {{sender}} is always empty at stage helo: no sender is known "
        "before MAIL FROM"
    ]


def test_the_hook_table() -> None:
    """Footers and DSN texts fill no session placeholder; the milter fills them all."""
    assert SESSION_FILLED["reject footers"] == SESSION_FILLED["DSN texts"] == frozenset()
    assert SESSION_FILLED["milter"] == CONTEXT_KEYS
    assert set(session_gaps(Stage.RCPT)) == {"hostname", "date"}  # the policy service's gap
    assert placeholders("{a} {b}\n{{x}} {a} {\n{c}") == ["a", "b", "c"]


# --- warnings never stop anything ------------------------------------------------------------


def test_warnings_come_with_problems_and_do_not_stop_loading(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[texts]\nhelp_url = "https://example.com/h"\n[milter]\ntimeout = -1\n'
    )
    report = check_config(etc_dir=tmp_path)
    assert report.config is None
    assert report.problems and len(report.warnings) == 1
    (tmp_path / "config.toml").write_text('[texts]\nhelp_url = "https://example.com/h"\n')
    seen: list[str] = []
    config = load_config(etc_dir=tmp_path, on_warning=seen.append)
    assert config.texts.help_url == "https://example.com/h"
    assert seen == check_config(etc_dir=tmp_path).warnings
    assert len(seen) == 1 and seen[0].startswith("config.toml:2: texts.help_url: example.com:")
