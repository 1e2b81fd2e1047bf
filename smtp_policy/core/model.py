"""Small frozen value types shared by every part of smtp_policy."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ReplyClass(StrEnum):
    """What the sending side does with a reply: go on, retry later, or give up."""

    SUCCESS = "success"
    INTERMEDIATE = "intermediate"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


class Actor(StrEnum):
    """Who has to act to resolve a reply."""

    SENDER = "sender"
    SENDER_ADMIN = "sender_admin"
    RECIPIENT = "recipient"
    RECIPIENT_ADMIN = "recipient_admin"
    POSTMASTER = "postmaster"
    NOBODY = "nobody"


class Reason(StrEnum):
    """The one vocabulary of why a reply was not a success (sisimai 5.x, plus greylisting)."""

    USER_UNKNOWN = "user_unknown"
    MAILBOX_FULL = "mailbox_full"
    SUSPEND = "suspend"
    EMAIL_TOO_LARGE = "email_too_large"
    HOST_UNKNOWN = "host_unknown"
    NO_RELAYING = "no_relaying"
    BLOCKED = "blocked"
    BAD_REPUTATION = "bad_reputation"
    SPAM_DETECTED = "spam_detected"
    VIRUS_DETECTED = "virus_detected"
    POLICY_VIOLATION = "policy_violation"
    AUTH_FAILURE = "auth_failure"
    REQUIRE_PTR = "require_ptr"
    REJECTED = "rejected"
    RATE_LIMITED = "rate_limited"
    GREYLISTING = "greylisting"
    SYSTEM_ERROR = "system_error"
    SYSTEM_FULL = "system_full"
    NETWORK_ERROR = "network_error"
    EXPIRED = "expired"
    FAILED_STARTTLS = "failed_starttls"
    NOT_ACCEPT = "not_accept"
    HAS_MOVED = "has_moved"
    SYNTAX_ERROR = "syntax_error"
    CONTENT_ERROR = "content_error"
    NOT_COMPLIANT_RFC = "not_compliant_rfc"
    SECURITY_ERROR = "security_error"
    FILTERED = "filtered"
    MAILER_ERROR = "mailer_error"
    SUPPRESSED = "suppressed"
    UNDEFINED = "undefined"


class ReplyForm(StrEnum):
    """The shape the reply was found in."""

    SMTP = "smtp"  # "550-5.1.1 ..." / "550 5.1.1 ..." lines, as on the wire
    POSTFIX = "postfix"  # "host mx[ip] said: 550 ... (in reply to RCPT TO command)"
    SENDMAIL = "sendmail"  # "stat=Deferred: 451 4.3.0 ..." / "reply=..."
    CLIENT_REPORT = (
        "client_report"  # "SMTP error from remote mail server after RCPT TO:<x>: 550 ..."
    )
    LOCAL = "local"  # an MTA's own text with no reply from a server: "Connection timed out"
    SHORTHAND = "shorthand"  # "SMTP error 511", "471", "SMTP Error 4.5.1"
    BARE = "bare"  # "550", "5.1.1"
    TEXT = "text"  # anything else: free text with an enhanced code somewhere, or none


@dataclass(frozen=True, slots=True, order=True)
class EnhancedCode:
    """An RFC 3463 enhanced status code, ``class.subject.detail``."""

    klass: int
    subject: int
    detail: int

    def __post_init__(self) -> None:
        if self.klass not in (2, 4, 5):
            raise ValueError(f"enhanced status class must be 2, 4 or 5, not {self.klass}")
        if not (0 <= self.subject <= 999 and 0 <= self.detail <= 999):
            raise ValueError("enhanced status subject and detail must be 0-999")

    @classmethod
    def parse(cls, text: str) -> EnhancedCode:
        """Parse ``"5.1.1"``; raise ValueError on anything else."""
        parts = text.strip().split(".")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
            raise ValueError(f"not an enhanced status code: {text!r}")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]))

    @property
    def key(self) -> str:
        """The registry key with the class left open, e.g. ``"X.1.1"``."""
        return f"X.{self.subject}.{self.detail}"

    def __str__(self) -> str:
        return f"{self.klass}.{self.subject}.{self.detail}"


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply (or an MTA's report of one), taken apart.

    ``code`` is the three-digit reply code as written, ``enhanced`` the RFC 3463 code (given, or
    implied by a shorthand such as "SMTP error 511"), ``text`` the human-readable part with
    codes and line prefixes removed and lines joined by one space.
    """

    raw: str
    code: int | None
    enhanced: EnhancedCode | None
    text: str
    form: ReplyForm
    lines: int = 1
    command: str | None = None  # the command it answered, when the source says ("RCPT TO")
    remote: str | None = None  # the server that said it, when the source says ("mx[192.0.2.1]")


class DecidedBy(StrEnum):
    """Which part of a reply decided its reason (its class, for a success): how sure to be."""

    RULE = "rule"  # a known wording of a provider or product: the surest
    ENHANCED = "enhanced"  # the enhanced status code's registry entry
    CODE = "code"  # the three-digit code alone: its usual meaning, not a certainty
    TEXT = "text"  # no code and no known wording: only the text was there to go on


@dataclass(frozen=True, slots=True)
class Classification:
    """What a reply means in the reason vocabulary, and which piece of knowledge decided."""

    reply: Reply
    klass: ReplyClass
    reason: Reason | None
    rule: str | None = None
    provider: str | None = None
    help_url: str | None = None
    decided_by: DecidedBy = DecidedBy.TEXT


@dataclass(frozen=True, slots=True)
class Explanation:
    """A classification put into words for a person."""

    classification: Classification
    summary: str
    explanation: str
    action: str
    actor: Actor
    code_meaning: str | None = None
    enhanced_meaning: str | None = None
    code_title: str | None = None
    enhanced_title: str | None = None

    @property
    def reply(self) -> Reply:
        return self.classification.reply

    def to_dict(self) -> dict[str, object]:
        """The stable JSON form used by ``smtp-policy explain --json`` and by events."""
        c = self.classification
        r = c.reply
        return {
            "reply": r.raw,
            "code": r.code,
            "enhanced": str(r.enhanced) if r.enhanced else None,
            "class": c.klass.value,
            "reason": c.reason.value if c.reason else None,
            "summary": self.summary,
            "explanation": self.explanation,
            "action": self.action,
            "actor": self.actor.value,
            "provider": c.provider,
            "help_url": c.help_url,
            "rule": c.rule,
            "decided_by": c.decided_by.value,
            "text": r.text,
            "form": r.form.value,
            "command": r.command,
            "remote": r.remote,
            "code_title": self.code_title,
            "code_meaning": self.code_meaning,
            "enhanced_title": self.enhanced_title,
            "enhanced_meaning": self.enhanced_meaning,
        }
