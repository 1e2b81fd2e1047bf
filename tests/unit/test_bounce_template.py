"""`smtp-policy postfix bounce-template`, validated by Postfix's own postconf -b."""

from __future__ import annotations

import shutil

import pytest

from smtp_policy.core.bounce import render_bounce_templates
from smtp_policy.core.errors import ConfigError

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"


def test_bad_templates_are_refused_with_every_problem() -> None:
    """Unknown names, multi-line or $ headers and an early EOF line are all reported."""
    with pytest.raises(ConfigError) as info:
        render_bounce_templates(
            {
                "failure": {"subject": "two\nlines", "body": "text\nEOF\nmore"},
                "delay": {"from": "costs $5"},
                "bogus": {},
            }
        )
    assert len(info.value.problems) == 4
    assert any("bogus" in p for p in info.value.problems)
    assert any("failure.body" in p for p in info.value.problems)
