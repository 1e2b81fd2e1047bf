"""The configuration: one TOML shape, read in layers, validated like a type.

The parts: :mod:`.model` (the frozen dataclasses), :mod:`.load` (which files, reading them,
load/check/reload), :mod:`.check` (parse, merge and validate), :mod:`.advice` (warnings about
what a valid configuration probably did not mean), :mod:`.lines` (a key's line in its file)
and :mod:`.listen` (the one listen-address parser).
"""

from __future__ import annotations

from smtp_policy.config.check import check_sources, validate
from smtp_policy.config.lines import find_line
from smtp_policy.config.listen import ListenAddress
from smtp_policy.config.load import (
    DEFAULTS_LABEL,
    ETC_DIR,
    check_config,
    config_files,
    default_source,
    load_config,
    read_sources,
    reload_or_keep,
)
from smtp_policy.config.model import (
    BannerConfig,
    Config,
    ConfigReport,
    ConfigSource,
    EventsConfig,
    FollowConfig,
    MapsConfig,
    MetricsConfig,
    MilterConfig,
    PolicyConfig,
)

__all__ = [
    "DEFAULTS_LABEL",
    "ETC_DIR",
    "BannerConfig",
    "Config",
    "ConfigReport",
    "ConfigSource",
    "EventsConfig",
    "FollowConfig",
    "ListenAddress",
    "MapsConfig",
    "MetricsConfig",
    "MilterConfig",
    "PolicyConfig",
    "check_config",
    "check_sources",
    "config_files",
    "default_source",
    "find_line",
    "load_config",
    "read_sources",
    "reload_or_keep",
    "validate",
]
