"""Listen addresses as the admin writes them: ``inet:127.0.0.1:PORT`` or ``unix:/path``."""

from __future__ import annotations

from dataclasses import dataclass

from smtp_policy.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where a daemon listens."""

    kind: str  # "inet" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse ``inet:HOST:PORT``, ``inet:PORT@HOST`` (milter style) or ``unix:PATH``."""
        kind, sep, rest = text.partition(":")
        if kind == "unix" and sep and rest:
            return cls("unix", path=rest)
        if kind == "inet" and sep:
            if "@" in rest:
                port, _, host = rest.partition("@")
            else:
                host, _, port = rest.rpartition(":")
            if port.isdigit() and 0 < int(port) < 65536 and host:
                return cls("inet", host=host.strip("[]"), port=int(port))
        raise ConfigError([f"listen address {text!r}: expected inet:HOST:PORT or unix:/path"])

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"inet:{self.host}:{self.port}"
