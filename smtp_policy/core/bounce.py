"""Render Postfix bounce(5) templates (the text of delivery status notifications)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from smtp_policy.core.errors import ConfigError

TEMPLATES = ("failure", "delay", "success", "verify")
_HEADERS = (
    ("Charset", "charset"),
    ("From", "from"),
    ("Subject", "subject"),
    ("Postmaster-Subject", "postmaster_subject"),
)


def render_bounce_templates(texts: Mapping[str, Mapping[str, Any]]) -> str:
    """A bounce(5) file with one ``<name>_template = <<EOF … EOF`` block per template.

    Raises ConfigError with every problem: unknown templates, multi-line or non-ASCII
    headers, a body line that would end the here-document early.
    """
    problems = [
        f"bounce.{name}: unknown template (use {', '.join(TEMPLATES)})"
        for name in texts
        if name not in TEMPLATES
    ]
    blocks = []
    for name in TEMPLATES:
        if name in texts:
            block, errors = _block(name, texts[name])
            blocks.append(block)
            problems += errors
    if problems:
        raise ConfigError(problems)
    return "\n".join(blocks)


def _block(name: str, spec: Mapping[str, Any]) -> tuple[str, list[str]]:
    problems = []
    body = str(spec.get("body", "")).strip("\n")
    charset = str(spec.get("charset", "us-ascii" if body.isascii() else "utf-8"))
    values = {**spec, "charset": charset}
    lines = []
    for header, key in _HEADERS:
        if key not in values:
            continue
        value = str(values[key])
        if "\n" in value or "\r" in value or not value.isascii() or "$" in value:
            problems.append(f"bounce.{name}.{key}: headers are one line of ASCII without $")
        lines.append(f"{header}: {value}")
    body_lines = body.splitlines()
    if any(line.strip() == "EOF" for line in body_lines):
        problems.append(f"bounce.{name}.body: a line 'EOF' would end the template early")
    text = "\n".join([f"{name}_template = <<EOF", *lines, "", *body_lines, "EOF", ""])
    return text, problems
