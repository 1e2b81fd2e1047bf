"""The configuration as types: frozen dataclasses, nothing downstream sees raw TOML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from smtp_policy.core.bounce import BounceConfig
from smtp_policy.core.policy import PolicyRule
from smtp_policy.core.texts import TextsConfig

#: A key's place in the TOML tree: ``("rules", 2, "code")``.
KeyPath = tuple[str | int, ...]


#: The milter engines: our own protocol code on asyncio, or libmilter's C threads.
MILTER_ENGINES = ("asyncio", "libmilter")
#: What the milter writes per session: an event per stage, one session event carrying every
#: stage's outcome, or both.
MILTER_EVENT_MODES = ("stages", "session", "both")


@dataclass(frozen=True, slots=True)
class MilterConfig:
    """``[milter]``: ``listen`` kept in libmilter's form (``inet:PORT@HOST``, ``unix:/path``);
    ``engine`` one of :data:`MILTER_ENGINES`, ``events`` one of :data:`MILTER_EVENT_MODES`."""

    listen: str = "unix:/var/spool/postfix/smtp-policy/milter.sock"
    timeout: int = 600
    engine: str = "asyncio"
    events: str = "stages"


@dataclass(frozen=True, slots=True)
class MapsConfig:
    """``[maps]``: the socketmap server (reject footers, DSN texts).

    ``dsn_deferrals``: the DSN filter rewrites deferrals (4.x.x) too, not only bounces.
    ``events_per_second``: lookup events written per second at most; one ``warning`` event
    counts the rest (a flood writes a bounded log, normal traffic every event).
    """

    listen: str = "inet:127.0.0.1:8896"
    same_line: bool = False
    dsn_deferrals: bool = False
    events_per_second: int = 1000


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """``[policy]``: the policy delegation server; ``events_per_second`` as for ``[maps]``."""

    listen: str = "inet:127.0.0.1:8897"
    events_per_second: int = 1000


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint; ``listen`` None means off.

    ``top_domains``: how many recipient domains may be labels (0: none); ``queue_interval``:
    seconds between ``postqueue -j`` polls for the queue gauges (0: none);
    ``queue_config_directory``: the Postfix instance postqueue asks (None: the default).
    """

    listen: str | None = None
    top_domains: int = 0
    queue_interval: int = 0
    queue_config_directory: str | None = None


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """``[events]``: ``output`` is ``"-"`` (standard output) or an absolute file path."""

    output: str = "-"


@dataclass(frozen=True, slots=True)
class FollowConfig:
    """``[follow]``: the log follower's sources and where it keeps its offsets."""

    logs: tuple[str, ...] = ()
    journal: bool = False
    journal_unit: str = "postfix@-.service"
    state_dir: str = "/var/lib/smtp-policy"

    @property
    def enabled(self) -> bool:
        """Whether there is anything to follow."""
        return bool(self.logs) or self.journal


@dataclass(frozen=True, slots=True)
class BannerConfig:
    """``[banner]``: the 220 greeting and 221 goodbye texts (templates)."""

    greeting: str = "{hostname} ESMTP"
    goodbye: str = "Bye"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; ``files`` are the admin files it was read from."""

    milter: MilterConfig = MilterConfig()
    maps: MapsConfig = MapsConfig()
    policy: PolicyConfig = PolicyConfig()
    metrics: MetricsConfig = MetricsConfig()
    events: EventsConfig = EventsConfig()
    follow: FollowConfig = FollowConfig()
    rules: tuple[PolicyRule, ...] = ()
    texts: TextsConfig = field(default_factory=TextsConfig)
    banner: BannerConfig = BannerConfig()
    bounce: BounceConfig = field(default_factory=BounceConfig)
    files: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """One configuration text: ``label`` names it in problems, ``path`` is None for defaults."""

    label: str
    text: str
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """What :func:`check_config` found: the config (None on problems), every problem and
    every warning (things a valid configuration probably did not mean), one line each."""

    config: Config | None
    problems: list[str]
    sources: list[ConfigSource] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
