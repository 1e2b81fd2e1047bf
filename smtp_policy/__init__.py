"""smtp_policy: record, explain and rewrite SMTP reply codes beside a live MTA."""

from __future__ import annotations

from .core.classify import classify
from .core.explain import explain, explain_text
from .core.model import (
    Actor,
    Classification,
    EnhancedCode,
    Explanation,
    Reason,
    Reply,
    ReplyClass,
    ReplyForm,
)
from .core.parse import parse_reply

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "Classification",
    "EnhancedCode",
    "Explanation",
    "Reason",
    "Reply",
    "ReplyClass",
    "ReplyForm",
    "__version__",
    "classify",
    "explain",
    "explain_text",
    "parse_reply",
]
