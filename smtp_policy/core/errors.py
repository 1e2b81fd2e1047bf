"""The one exception hierarchy of smtp_policy."""

from __future__ import annotations


class SmtpPolicyError(Exception):
    """Base of every error smtp_policy raises on purpose."""


class KnowledgeError(SmtpPolicyError):
    """The shipped knowledge data is inconsistent (a bug in a data file)."""

    def __init__(self, where: str, key: str, message: str) -> None:
        super().__init__(f"{where}: {key}: {message}")
        self.where = where
        self.key = key
        self.message = message


class ConfigError(SmtpPolicyError):
    """An admin's configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ProtocolError(SmtpPolicyError):
    """A peer (an MTA, a client) sent something the protocol does not allow."""
