"""smtp_policy: record, explain and rewrite SMTP reply codes beside a live MTA."""

from __future__ import annotations

from smtp_policy.core.classify import classify
from smtp_policy.core.explain import explain, explain_text
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
from smtp_policy.core.parse import parse_reply

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
