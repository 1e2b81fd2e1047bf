"""follow: the command line over [follow], [events] and [metrics] (pure: no file is read)."""

from __future__ import annotations

import argparse

import pytest

from smtp_policy.cli import build_parser
from smtp_policy.commands.follow import DEFAULT_LOG, FollowSettings, follow_settings
from smtp_policy.config import Config, EventsConfig, FollowConfig, ListenAddress, MetricsConfig
from smtp_policy.core.errors import ConfigError

#: A configuration that names everything the follower reads.
CONFIGURED = Config(
    follow=FollowConfig(
        logs=("/var/log/a.log", "/var/log/b.log"),
        journal=True,
        journal_unit="postfix@main.service",
        state_dir="/srv/follow-state",
    ),
    events=EventsConfig("/var/log/smtp-policy/events.jsonl"),
    metrics=MetricsConfig("inet:0.0.0.0:9150"),
)
SYSTEMD = {"STATE_DIRECTORY": "/var/lib/smtp-policy"}


def options(*argv: str) -> argparse.Namespace:
    """``smtp-policy follow ARGV`` parsed."""
    return build_parser().parse_args(["follow", *argv])


def settings(
    *argv: str,
    config: Config = CONFIGURED,
    environ: dict[str, str] | None = None,
    mail_log: bool = True,
) -> FollowSettings:
    """The settings of ``follow ARGV`` with ``config``; ``mail_log``: /var/log/mail.log exists."""
    return follow_settings(
        options(*argv), config, environ or {}, exists=lambda path: mail_log and path == DEFAULT_LOG
    )


def test_the_configuration_is_used_without_options() -> None:
    """[follow] sources and state, [events] output and [metrics] listen, as configured."""
    got = settings(environ=SYSTEMD)
    assert got.logs == ("/var/log/a.log", "/var/log/b.log")
    assert got.journal and not got.stdin
    assert got.journal_unit == "postfix@main.service"
    assert got.state_dir == "/srv/follow-state"  # the file wins over systemd's default
    assert got.events == "/var/log/smtp-policy/events.jsonl"
    assert got.metrics == ListenAddress("inet", host="0.0.0.0", port=9150)


def test_options_override_the_configuration() -> None:
    """Every option that has a configuration key wins over it."""
    got = settings(
        "--state", "/tmp/s", "--events", "/tmp/e.jsonl",
        "--metrics-listen", "127.0.0.1:9151", "--journal-unit", "",
    )  # fmt: skip
    assert got.logs == ("/var/log/a.log", "/var/log/b.log")  # no source option: [follow]'s
    assert got.state_dir == "/tmp/s"
    assert got.events == "/tmp/e.jsonl"
    assert got.metrics == ListenAddress("inet", host="127.0.0.1", port=9151)
    assert got.journal_unit is None  # '' is the whole journal


@pytest.mark.parametrize(
    ("argv", "logs", "stdin", "journal"),
    [
        (("--log", "/x.log", "/y.log", "--log", "/x.log"), ("/x.log", "/y.log"), False, False),
        (("-",), (), True, False),
        (("--journal",), (), False, True),
    ],
)
def test_sources_on_the_command_line_replace_the_configured_ones(
    argv: tuple[str, ...], logs: tuple[str, ...], stdin: bool, journal: bool
) -> None:
    """Named sources replace [follow]'s, and [follow] state_dir then stays untouched."""
    got = settings(*argv)
    assert (got.logs, got.stdin, got.journal) == (logs, stdin, journal)
    assert got.state_dir is None
    assert settings(*argv, environ=SYSTEMD).state_dir == "/var/lib/smtp-policy"
    assert settings(*argv, "--state", "/tmp/s").state_dir == "/tmp/s"


def test_without_sources_anywhere_the_mail_log_or_the_journal() -> None:
    """Nothing in [follow] and no option: /var/log/mail.log if it exists, else the journal."""
    bare = Config()
    got = settings(config=bare)
    assert (got.logs, got.journal) == ((DEFAULT_LOG,), False)
    assert (got.state_dir, got.events, got.metrics) == (None, "-", None)
    assert got.journal_unit == "postfix@-.service"
    got = settings(config=bare, mail_log=False, environ=SYSTEMD)
    assert (got.logs, got.journal) == ((), True)
    assert got.state_dir == "/var/lib/smtp-policy"


def test_an_empty_state_dir_keeps_no_state() -> None:
    """[follow] state_dir = "" keeps none, even under systemd."""
    config = Config(follow=FollowConfig(logs=("/var/log/a.log",), state_dir=""))
    assert settings(config=config, environ=SYSTEMD).state_dir is None


def test_an_empty_metrics_option_turns_configured_metrics_off() -> None:
    """--metrics-listen '' serves none, whatever [metrics] says."""
    assert settings("--metrics-listen", "").metrics is None


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("inet:127.0.0.1:9150", "inet:127.0.0.1:9150"),
        ("127.0.0.1:9150", "inet:127.0.0.1:9150"),
        (":9150", "inet:127.0.0.1:9150"),
        ("[::1]:9150", "inet:[::1]:9150"),
        ("inet:[::]:9150", "inet:[::]:9150"),
    ],
)
def test_metrics_spellings_from_the_option_and_the_file(spelling: str, canonical: str) -> None:
    """Both read every ListenAddress spelling (``:PORT`` is the loopback)."""
    assert str(settings("--metrics-listen", spelling).metrics) == canonical
    from_file = Config(metrics=MetricsConfig(spelling))
    assert str(settings(config=from_file).metrics) == canonical


@pytest.mark.parametrize("bad", ["nonsense", "unix:/run/m.sock", "127.0.0.1:99999"])
def test_a_bad_metrics_option_names_the_option(bad: str) -> None:
    """One problem, naming --metrics-listen."""
    with pytest.raises(ConfigError) as caught:
        settings("--metrics-listen", bad)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("--metrics-listen: ")


def test_the_help_shows_the_canonical_metrics_form() -> None:
    """--help writes inet:127.0.0.1:9150, the form every listen option takes."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["follow"].format_help().split())
    assert "inet:127.0.0.1:9150" in text
    assert "[metrics] listen" in text and "[events] output" in text and "--config" in text
