"""Which files are read, reading them, and the entry points: load, check, reload.

The files are read in this order, later ones winning, tables merging deeply (fail2ban's
``.conf``/``.d``/``.local`` idea, without the INI):

1. the shipped defaults, ``smtp_policy/data/defaults.toml`` (never edited by admins);
2. ``/etc/smtp-policy/config.toml``;
3. ``/etc/smtp-policy/conf.d/*.toml`` in name order;

or, with an explicit ``--config FILE``, the defaults and that one file only. Turning the texts
into a Config (parse, merge, check, warn) is :func:`smtp_policy.config.check.check_sources`'s
job.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from smtp_policy.config.check import check_sources
from smtp_policy.config.model import Config, ConfigReport, ConfigSource
from smtp_policy.core.errors import ConfigError

#: Where the admin's files live.
ETC_DIR = Path("/etc/smtp-policy")
DEFAULTS_LABEL = "smtp_policy/data/defaults.toml"


def config_files(path: str | Path | None = None, *, etc_dir: Path = ETC_DIR) -> list[Path]:
    """The admin files that would be read, in order (the shipped defaults always come first).

    With ``path``: just that file. Without: ``config.toml`` (if it exists), then
    ``conf.d/*.toml`` in name order (hidden files skipped).
    """
    return _listing(path, etc_dir)[0]


def _listing(path: str | Path | None, etc_dir: Path) -> tuple[list[Path], list[str]]:
    if path is not None:
        return [Path(path)], []
    main = etc_dir / "config.toml"
    files = [main] if _present(main) else []
    conf_d = etc_dir / "conf.d"
    try:
        entries = sorted(os.scandir(conf_d), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return files, []
    except OSError as exc:
        return files, [f"{_relative_label(conf_d, etc_dir)}: cannot list: {exc.strerror or exc}"]
    wanted = (e for e in entries if e.name.endswith(".toml") and not e.name.startswith("."))
    return files + [Path(e.path) for e in wanted if e.is_file()], []


def _present(path: Path) -> bool:
    """Whether ``path`` may exist; an unreadable one counts, so that reading it says why."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def default_source() -> ConfigSource:
    """The shipped defaults as a source."""
    text = (resources.files("smtp_policy") / "data" / "defaults.toml").read_text("utf-8")
    return ConfigSource(DEFAULTS_LABEL, text)


def read_sources(
    path: str | Path | None = None, *, etc_dir: Path = ETC_DIR
) -> tuple[list[ConfigSource], list[str]]:
    """The defaults and the admin files as sources, plus one problem per unreadable file."""
    sources = [default_source()]
    files, problems = _listing(path, etc_dir)
    for file in files:
        label = str(file) if path is not None else _relative_label(file, etc_dir)
        try:
            raw = file.read_bytes()
        except OSError as exc:
            problems.append(f"{label}: cannot read: {exc.strerror or exc}")
            continue
        try:
            sources.append(ConfigSource(label, raw.decode("utf-8"), file))
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            problems.append(f"{label}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason})")
    return sources, problems


def _relative_label(file: Path, etc_dir: Path) -> str:
    try:
        return str(file.relative_to(etc_dir))
    except ValueError:
        return str(file)


def check_config(path: str | Path | None = None, *, etc_dir: Path = ETC_DIR) -> ConfigReport:
    """Read and validate everything; never raises for bad input."""
    sources, problems = read_sources(path, etc_dir=etc_dir)
    report = check_sources(sources)
    problems += report.problems
    return ConfigReport(None if problems else report.config, problems, sources, report.warnings)


def load_config(
    path: str | Path | None = None,
    *,
    etc_dir: Path = ETC_DIR,
    on_warning: Callable[[str], None] | None = None,
) -> Config:
    """The validated configuration; ConfigError lists every problem at once.

    ``on_warning`` is called with each warning (``FILE:LINE: key.path: message``) of a
    configuration that loads; the daemons log them at start.
    """
    report = check_config(path, etc_dir=etc_dir)
    if report.config is None:
        raise ConfigError(report.problems)
    if on_warning is not None:
        for warning in report.warnings:
            on_warning(warning)
    return report.config


def reload_or_keep(
    current: Config,
    path: str | Path | None,
    on_error: Callable[[ConfigError], None],
    *,
    etc_dir: Path = ETC_DIR,
) -> Config:
    """For SIGHUP: the freshly loaded configuration, or ``current`` if it has problems."""
    try:
        return load_config(path, etc_dir=etc_dir)
    except ConfigError as exc:
        on_error(exc)
        return current
