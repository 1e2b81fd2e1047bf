"""The configuration: layering, validation messages, check-config and reloading."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.config import (
    DEFAULTS_LABEL,
    BannerConfig,
    Config,
    ConfigSource,
    EventsConfig,
    FollowConfig,
    MapsConfig,
    MetricsConfig,
    MilterConfig,
    PolicyConfig,
    check_config,
    config_files,
    default_source,
    find_line,
    load_config,
    reload_or_keep,
    validate,
)
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.model import EnhancedCode, Reason
from smtp_policy.core.policy import RuleAction, RuleFacts, match_rules
from smtp_policy.core.stages import Stage

ROOT = Path(__file__).resolve().parents[2]


def write(base: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``base/name`` (creating directories) and return the path."""
    path = base / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(etc: Path, text: str, name: str = "conf.d/10-test.toml") -> list[str]:
    """The problems of the defaults plus one admin file under ``etc``."""
    write(etc, name, text)
    return check_config(etc_dir=etc).problems


# --- layering --------------------------------------------------------------------------


def test_no_files_means_the_shipped_defaults(tmp_path: Path) -> None:
    """Without /etc files the defaults apply, and they agree with the dataclass defaults."""
    config = load_config(etc_dir=tmp_path / "missing")
    assert config.milter == MilterConfig()
    assert config.maps == MapsConfig()
    assert config.policy == PolicyConfig()
    assert config.metrics == MetricsConfig()
    assert config.events == EventsConfig()
    assert config.follow == FollowConfig()
    assert config.banner == BannerConfig()
    assert config.rules == ()
    assert config.files == ()
    assert config.texts.default.external == "{summary}. {action}\nMore information: {help_url}"


def test_layers_apply_in_order_and_tables_merge_deeply(tmp_path: Path) -> None:
    """defaults < config.toml < conf.d/* by name; scalars and arrays replace, tables merge."""
    write(
        tmp_path,
        "config.toml",
        '[milter]\ntimeout = 100\n[texts]\ninternal_networks = ["10.0.0.0/8"]\n'
        '[texts.reason.user_unknown]\nexternal = "ext from config.toml"\n',
    )
    write(
        tmp_path,
        "conf.d/20-late.toml",
        '[milter]\ntimeout = 300\n[texts]\ninternal_networks = ["192.168.0.0/16"]\n',
    )
    write(
        tmp_path,
        "conf.d/10-early.toml",
        '[milter]\ntimeout = 200\nlisten = "unix:/run/smtp-policy/milter.sock"\n'
        '[texts.reason.user_unknown]\ninternal = "int from 10-early"\n',
    )
    config = load_config(etc_dir=tmp_path)
    assert config.milter == MilterConfig("unix:/run/smtp-policy/milter.sock", 300)
    assert [str(n) for n in config.texts.internal_networks] == ["192.168.0.0/16"]
    entry = config.texts.reason[Reason.USER_UNKNOWN]
    assert (entry.external, entry.internal) == ("ext from config.toml", "int from 10-early")
    assert config.maps == MapsConfig()  # untouched sections keep their defaults
    assert [p.name for p in config.files] == ["config.toml", "10-early.toml", "20-late.toml"]


def test_config_files_order_and_skips(tmp_path: Path) -> None:
    """conf.d is read in name order; hidden files, other suffixes and directories are not."""
    for name in ("conf.d/b.toml", "conf.d/a.toml", "conf.d/.swap.toml", "conf.d/c.toml.bak"):
        write(tmp_path, name, "")
    (tmp_path / "conf.d" / "d.toml").mkdir()
    assert [p.name for p in config_files(etc_dir=tmp_path)] == ["a.toml", "b.toml"]
    write(tmp_path, "config.toml", "")
    assert [p.name for p in config_files(etc_dir=tmp_path)] == [
        "config.toml",
        "a.toml",
        "b.toml",
    ]
    assert config_files("/x/y.toml", etc_dir=tmp_path) == [Path("/x/y.toml")]


def test_explicit_config_reads_only_defaults_and_that_file(tmp_path: Path) -> None:
    """--config FILE ignores /etc/smtp-policy entirely."""
    etc = tmp_path / "etc"
    write(etc, "config.toml", "[milter]\ntimeout = 1\n")
    write(etc, "conf.d/10.toml", "[milter]\ntimeout = 2\n")
    own = write(tmp_path, "mine.toml", "[maps]\nsame_line = true\n")
    config = load_config(own, etc_dir=etc)
    assert config.milter.timeout == 600
    assert config.maps.same_line is True
    assert config.files == (own,)


def test_rules_accumulate_and_a_later_same_name_replaces_in_place(tmp_path: Path) -> None:
    """[[rules]] add up across files; redefining a name replaces that rule where it was."""
    write(
        tmp_path,
        "config.toml",
        '[[rules]]\nname = "one"\nstage = "mail"\naction = "reject"\n'
        '[[rules]]\nname = "two"\nstage = "mail"\naction = "accept"\n',
    )
    write(
        tmp_path,
        "conf.d/10.toml",
        '[[rules]]\nname = "three"\nstage = "rcpt"\naction = "discard"\n'
        '[[rules]]\nname = "one"\nstage = "mail"\naction = "tempfail"\n',
    )
    rules = load_config(etc_dir=tmp_path).rules
    assert [(r.name, r.action) for r in rules] == [
        ("one", RuleAction.TEMPFAIL),
        ("two", RuleAction.ACCEPT),
        ("three", RuleAction.DISCARD),
    ]


def test_rule_reply_defaults_and_matching(tmp_path: Path) -> None:
    """Codes default per action; enhanced follows the code's class; rules match as loaded."""
    write(
        tmp_path,
        "config.toml",
        '[[rules]]\nname = "r"\nstage = "mail"\naction = "reject"\n'
        '[[rules]]\nname = "t"\nstage = "mail"\naction = "tempfail"\n'
        '[[rules]]\nname = "c"\nstage = "rcpt"\naction = "reject"\ncode = 554\n'
        'recipient = ["*@example.com"]\nclient_network = ["192.0.2.0/24"]\n'
        '[[rules]]\nname = "e"\nstage = "eom"\naction = "reject"\nenhanced = "5.3.4"\n'
        "size_over = 1000\n",
    )
    r, t, c, e = load_config(etc_dir=tmp_path).rules
    assert (r.code, r.enhanced) == (550, EnhancedCode(5, 7, 1))
    assert (t.code, t.enhanced) == (451, EnhancedCode(4, 7, 1))
    assert (c.code, c.enhanced) == (554, EnhancedCode(5, 7, 1))
    assert (e.code, e.enhanced) == (550, EnhancedCode(5, 3, 4))
    facts = RuleFacts(client_addr="192.0.2.5", recipient="<bob@Example.com>")
    assert match_rules((r, t, c, e), Stage.RCPT, facts) is c
    assert match_rules((r, t, c, e), "eom", RuleFacts(size=1001)) is e


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("inet:8895@127.0.0.1", "inet:8895@127.0.0.1"),
        ("inet:127.0.0.1:8895", "inet:8895@127.0.0.1"),
        ("inet:[::1]:8895", "inet6:8895@::1"),
        ("inet6:8895@::1", "inet6:8895@::1"),
        ("unix:/run/smtp-policy/milter.sock", "unix:/run/smtp-policy/milter.sock"),
        ("local:/run/m.sock", "unix:/run/m.sock"),
    ],
)
def test_milter_listen_is_normalised_for_libmilter(
    tmp_path: Path, listen: str, expected: str
) -> None:
    """Both milter and Postfix spellings are accepted; libmilter's form is kept."""
    own = write(tmp_path, "c.toml", f'[milter]\nlisten = "{listen}"\n')
    assert load_config(own).milter.listen == expected


# --- one problem per bad input -----------------------------------------------------------

F = "conf.d/10-test.toml"


@pytest.mark.parametrize("listen", ["127.0.0.1:9150", "inet:127.0.0.1:9150", ":9150", "[::1]:9150"])
def test_metrics_listen_takes_the_command_line_form(tmp_path: Path, listen: str) -> None:
    """[metrics] listen accepts what --metrics-listen accepts (``:PORT`` is the loopback)."""
    own = write(tmp_path, "c.toml", f'[metrics]\nlisten = "{listen}"\n')
    assert load_config(own).metrics.listen == listen


@pytest.mark.parametrize(
    ("maps", "policy"),
    [
        ("inet:127.0.0.1:8896", "inet:8896@127.0.0.1"),
        ("inet:[::1]:8896", "inet6:8896@::1"),
        ("unix:/run/smtp-policy/maps.sock", "local:/run/smtp-policy/maps.sock"),
    ],
)
def test_a_listen_clash_is_found_whatever_the_spelling(
    tmp_path: Path, maps: str, policy: str
) -> None:
    text = f'[maps]\nlisten = "{maps}"\n[policy]\nlisten = "{policy}"\n'
    assert problems_of(tmp_path, text) == [
        f"{F}:4: policy.listen: {policy!r} is already maps.listen"
    ]


BAD_INPUTS = [
    pytest.param(
        "[milter]\nlisten = 8895\n",
        f"{F}:2: milter.listen: expected a string, got integer 8895",
        id="wrong-type",
    ),
    pytest.param(
        '[milter]\nlistn = "inet:1@x"\n',
        f"{F}:2: milter.listn: unknown key 'listn' (did you mean 'listen'?)",
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        "[miltr]\ntimeout = 5\n",
        f"{F}:1: miltr: unknown key 'miltr' (did you mean 'milter'?)",
        id="unknown-section",
    ),
    pytest.param(
        "[milter]\n\n\ntimeout = 0\n",
        f"{F}:4: milter.timeout: must be a positive number of seconds",
        id="milter-timeout",
    ),
    pytest.param(
        '[milter]\nlisten = "inet:99999@127.0.0.1"\n',
        f"{F}:2: milter.listen: cannot parse 'inet:99999@127.0.0.1': port 99999 is out of range "
        "(1-65535)",
        id="milter-listen",
    ),
    pytest.param(
        '[maps]\nlisten = "tcp:127.0.0.1:8896"\n',
        f"{F}:2: maps.listen: cannot parse 'tcp:127.0.0.1:8896': expected inet:HOST:PORT or "
        "unix:/path",
        id="maps-listen",
    ),
    pytest.param(
        '[policy]\nlisten = "unix:run/p.sock"\n',
        f"{F}:2: policy.listen: cannot parse 'unix:run/p.sock': a unix socket path must be "
        "absolute",
        id="relative-unix-socket",
    ),
    pytest.param(
        '[policy]\nlisten = "inet:127.0.0.1:8896"\n',
        f"{F}:2: policy.listen: 'inet:127.0.0.1:8896' is already maps.listen",
        id="listen-clash",
    ),
    pytest.param(
        '[metrics]\nlisten = "unix:/run/m.sock"\n',
        f"{F}:2: metrics.listen: metrics are served over HTTP: use inet:HOST:PORT",
        id="metrics-unix",
    ),
    pytest.param(
        '[events]\noutput = "events.log"\n',
        f"""{F}:2: events.output: 'events.log': must be an absolute path or "-\"""",
        id="events-relative",
    ),
    pytest.param(
        '[events]\noutput = "/etc/hostname/events.log"\n',
        f"{F}:2: events.output: cannot create /etc/hostname/events.log: /etc/hostname is not "
        "a directory",
        id="events-under-a-file",
    ),
    pytest.param(
        '[follow]\nlogs = ["mail.log"]\n',
        f"{F}:2: follow.logs[0]: 'mail.log': must be an absolute path",
        id="follow-relative-log",
    ),
    pytest.param(
        '[follow]\njournal = "yes"\n',
        f'{F}:2: follow.journal: expected true or false, got string "yes"',
        id="follow-bool",
    ),
    pytest.param(
        '[texts]\ninternal_networks = ["10.0.0.1/8"]\n',
        f"{F}:2: texts.internal_networks[0]: not a network: 10.0.0.1/8 has host bits set",
        id="cidr-host-bits",
    ),
    pytest.param(
        '[texts]\ninternal_networks = ["10.0.0.0/33"]\n',
        f"{F}:2: texts.internal_networks[0]: not a network: '10.0.0.0/33' does not appear to "
        "be an IPv4 or IPv6 network",
        id="cidr-prefix",
    ),
    pytest.param(
        '[texts]\ndefault_language = "english!"\n',
        f"{F}:2: texts.default_language: 'english!' is not a language tag like 'en' or 'pt-BR'",
        id="language-tag",
    ),
    pytest.param(
        '[texts]\nhelp_url = "help.example.com"\n',
        f"{F}:2: texts.help_url: must start with https://, http:// or mailto:",
        id="help-url",
    ),
    pytest.param(
        '[texts.reason.user_unknown]\nexternal = "x"\n\ninternal = "No {rcpt} here"\n',
        f"{F}:4: texts.reason.user_unknown.internal: unknown placeholder {{rcpt}} "
        "(did you mean {recipient}?)",
        id="unknown-placeholder",
    ),
    pytest.param(
        '[texts.reason.user_unkown]\nexternal = "x"\n',
        f"{F}:1: texts.reason.user_unkown: unknown reason 'user_unkown' "
        "(did you mean 'user_unknown'?)",
        id="unknown-reason",
    ),
    pytest.param(
        '[texts.enhanced."5.7"]\nexternal = "x"\n',
        f"""{F}:1: texts.enhanced."5.7": '5.7' is not an enhanced code like "5.7.1" or "X.7.1\"""",
        id="enhanced-key",
    ),
    pytest.param(
        '[texts.code.250]\nexternal = "x"\n',
        f"{F}:1: texts.code.250: '250' is not a 4xx or 5xx reply code (texts are for failures)",
        id="code-key",
    ),
    pytest.param(
        '[texts.code.550]\nexternal = "a\\rb"\n',
        f"{F}:2: texts.code.550.external: contains a carriage return (CR): use a line break "
        "for a new reply line",
        id="template-cr",
    ),
    pytest.param(
        '[texts.code.550]\nexternal = "a\\u0000b"\n',
        f"{F}:2: texts.code.550.external: contains a NUL character",
        id="template-nul",
    ),
    pytest.param(
        '[texts.code.550]\nexternal = "{code"\n',
        f"{F}:2: texts.code.550.external: unbalanced brace: write {{{{ and }}}} for literal braces",
        id="template-brace",
    ),
    pytest.param(
        '[texts.code.550]\nexternal = " "\n',
        f"{F}:2: texts.code.550.external: renders to nothing: write some text, or leave the "
        "key out",
        id="template-empty",
    ),
    pytest.param(
        '[texts.code.550]\nexternal = """\n' + "line\n" * 33 + '"""\n',
        f"{F}:2: texts.code.550.external: renders to 33 reply lines; at most 32 are allowed",
        id="template-too-long",
    ),
    pytest.param(
        '[texts.code.550]\nextrenal = "x"\n',
        f"{F}:2: texts.code.550.extrenal: unknown key 'extrenal' (did you mean 'external'?)",
        id="entry-key",
    ),
    pytest.param(
        '[texts.reason.user_unknown.lang."x y"]\nexternal = "x"\n',
        f"""{F}:1: texts.reason.user_unknown.lang."x y": 'x y' is not a language tag like 'en' """
        "or 'pt-BR'",
        id="lang-tag",
    ),
    pytest.param(
        '[banner]\ngreeting = "Welcome to {hostname}"\n',
        f"{F}:2: banner.greeting: must start with {{hostname}}: a 220 greeting names the server "
        "first (RFC 5321 4.2; Postfix's smtpd_banner must start with $myhostname)",
        id="greeting-hostname",
    ),
    pytest.param(
        '[banner]\ngoodbye = "Bye {recipient}"\n',
        f"{F}:2: banner.goodbye: placeholder {{recipient}} is not available here (use "
        "{client_addr} {client_name} {date} {hostname})",
        id="goodbye-placeholder",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "connnect"\naction = "reject"\n',
        f"{F}:3: rules[0].stage: unknown stage 'connnect' (did you mean 'connect'?)",
        id="unknown-stage",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "bounce"\n',
        f"{F}:4: rules[0].action: unknown action 'bounce'",
        id="unknown-action",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "reject"\nreason = "spam_detect"\n',
        f"{F}:5: rules[0].reason: unknown reason 'spam_detect' (did you mean 'spam_detected'?)",
        id="rule-reason",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "reject"\ncode = 450\n',
        f"{F}:5: rules[0].code: 450 is a temporary (4xx) code: a reject rule needs 5xx; use "
        'action = "tempfail" for 4xx',
        id="reject-with-4xx",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "tempfail"\ncode = 550\n',
        f"{F}:5: rules[0].code: 550 is a permanent (5xx) code: a tempfail rule needs 4xx; use "
        'action = "reject" for 5xx',
        id="tempfail-with-5xx",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "reject"\ncode = 250\n',
        f"{F}:5: rules[0].code: 250 is a success (2xx) code: a reject rule needs 5xx",
        id="reject-with-2xx",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "reject"\ncode = 550\n'
        'enhanced = "4.7.1"\n',
        f"{F}:6: rules[0].enhanced: 4.7.1 does not match code 550: its class (first digit) "
        "must be 5",
        id="enhanced-class",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "reject"\nenhanced = "5.7"\n',
        f"""{F}:5: rules[0].enhanced: '5.7' is not an enhanced status code like "5.7.1" """
        "(class 2, 4 or 5)",
        id="enhanced-syntax",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "accept"\ncode = 250\n',
        f"{F}:5: rules[0].code: accept rules send no reply: leave code out (only reject and "
        "tempfail rules reply)",
        id="accept-with-code",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "connect"\naction = "reject"\nsender = ["*@x"]\n',
        f"{F}:5: rules[0].sender: never known at stage 'connect': sender is known from stage "
        "'mail' on, so this rule could never match",
        id="fact-not-known-at-stage",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "rcpt"\naction = "reject"\n'
        'client_network = ["192.0.2.0/24", "192.0.2.1/24"]\n',
        f"{F}:5: rules[0].client_network[1]: not a network: 192.0.2.1/24 has host bits set",
        id="rule-cidr",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "rcpt"\naction = "reject"\nrecipient = ["/[a/"]\n',
        f"{F}:5: rules[0].recipient[0]: bad regular expression '/[a/': unterminated character "
        "set at position 0",
        id="rule-regex",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "reject"\nsender = ["/(a+)\\\\1@x/"]\n',
        f"{F}:5: rules[0].sender[0]: bad regular expression '/(a+)\\\\1@x/': not supported by "
        "the linear-time engine (RE2): invalid escape sequence: \\1 (backreferences and "
        "lookarounds are not)",
        id="rule-regex-backreference",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "helo"\naction = "reject"\nhelo = ["/(?!mx)\\\\w+/"]\n',
        f"{F}:5: rules[0].helo[0]: bad regular expression '/(?!mx)\\\\w+/': not supported by "
        "the linear-time engine (RE2): invalid perl operator: (?! (backreferences and "
        "lookarounds are not)",
        id="rule-regex-lookahead",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "rcpt"\naction = "reject"\nrecipient = []\n',
        f"{F}:5: rules[0].recipient: empty list: leave the key out to match anything",
        id="rule-empty-list",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "eom"\naction = "discard"\nsize_over = -5\n',
        f"{F}:5: rules[0].size_over: must be a number of bytes (0 or more)",
        id="rule-size",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "reject"\ntext = "Go {away"\n',
        f"{F}:5: rules[0].text: unbalanced brace: write {{{{ and }}}} for literal braces",
        id="rule-text",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "reject"\nsendr = ["a"]\n',
        f"{F}:5: rules[0].sendr: unknown key 'sendr' (did you mean 'sender'?)",
        id="rule-unknown-key",
    ),
    pytest.param(
        '[[rules]]\nstage = "mail"\naction = "reject"\n',
        f"{F}:1: rules[0].name: missing (required)",
        id="rule-without-name",
    ),
    pytest.param(
        '[[rules]]\nname = "x"\nstage = "mail"\naction = "accept"\n\n'
        '[[rules]]\nname = "x"\nstage = "rcpt"\naction = "accept"\n',
        f"{F}:7: rules[1].name: duplicate rule name 'x' (also rules[0])",
        id="duplicate-rule-name",
    ),
    pytest.param(
        '[rules]\nname = "x"\n',
        f"{F}:1: rules: expected an array of tables [[rules]], got a table",
        id="rules-not-an-array",
    ),
    pytest.param(
        "[milter]\nlisten = \n",
        f"{F}:2: invalid TOML: Invalid value (at line 2, column 10)",
        id="broken-toml",
    ),
    pytest.param(
        '[milter]\ntimeout = 5\n[milter]\nlisten = "x"\n',
        f"{F}:3: invalid TOML: Cannot declare ('milter',) twice (at line 3, column 8)",
        id="toml-duplicate-table",
    ),
]


@pytest.mark.parametrize(("text", "problem"), BAD_INPUTS)
def test_each_bad_input_gives_one_clear_line(tmp_path: Path, text: str, problem: str) -> None:
    """FILE:LINE: key.path: message, exactly one line per mistake."""
    assert problems_of(tmp_path, text) == [problem]


def test_every_wrong_type_is_one_problem(tmp_path: Path) -> None:
    """For every scalar key of the defaults, a value of another type is one problem there."""
    defaults = tomllib.loads(default_source().text)
    wrong: dict[type, str] = {str: "5", bool: '"yes"', int: '"5"', list: '"x"'}
    checked = 0
    for section, table in defaults.items():
        for key, value in table.items():
            if isinstance(value, dict):
                continue
            write(tmp_path, F, f"[{section}]\n{key} = {wrong[type(value)]}\n")
            problems = check_config(etc_dir=tmp_path).problems
            assert len(problems) == 1, problems
            assert problems[0].startswith(f"{F}:2: {section}.{key}: expected "), problems
            checked += 1
    assert checked >= 15


def test_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is one problem with its line."""
    path = tmp_path / "conf.d" / "x.toml"
    path.parent.mkdir()
    path.write_bytes(b"[milter]\ntimeout = 5 # caf\xe9\n")
    assert check_config(etc_dir=tmp_path).problems == [
        "conf.d/x.toml:2: not UTF-8 text (byte 26: invalid continuation byte)"
    ]


def test_missing_explicit_file(tmp_path: Path) -> None:
    """--config with a file that is not there says so."""
    missing = tmp_path / "nope.toml"
    assert check_config(missing).problems == [f"{missing}: cannot read: No such file or directory"]


def unwritable(path: Path) -> Callable[[str | Path, int], bool]:
    """An os.access stand-in that refuses writing to ``path`` (tests may run as root)."""
    real = os.access

    def access(target: str | Path, mode: int, **kw: object) -> bool:
        if Path(target) == path and mode & os.W_OK:
            return False
        return real(target, mode)

    return access


def test_unwritable_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """state_dir is checked on its nearest existing parent, when the follower is on."""
    monkeypatch.setattr(os, "access", unwritable(tmp_path))
    state = tmp_path / "a" / "b"
    problems = problems_of(
        tmp_path / "etc",
        f'[follow]\nlogs = ["/var/log/mail.log"]\nstate_dir = "{state}"\n',
    )
    assert problems == [
        f"{F}:3: follow.state_dir: cannot create {state}: {tmp_path} is not writable"
    ]
    # a follower that is off needs no state directory
    assert problems_of(tmp_path / "etc", f'[follow]\nstate_dir = "{state}"\n') == []


def test_unwritable_events_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing events file must be writable; a directory is not a file."""
    events = write(tmp_path, "events.jsonl", "")
    monkeypatch.setattr(os, "access", unwritable(events))
    etc = tmp_path / "etc"
    assert problems_of(etc, f'[events]\noutput = "{events}"\n') == [
        f"{F}:2: events.output: {events} is not writable"
    ]
    assert problems_of(etc, f'[events]\noutput = "{tmp_path}"\n') == [
        f"{F}:2: events.output: {tmp_path} is a directory"
    ]


def test_all_problems_at_once_sorted_by_file_and_line(tmp_path: Path) -> None:
    """ConfigError carries every problem of every file, in file and line order."""
    write(tmp_path, "config.toml", "[milter]\ntimeout = -1\n")
    write(tmp_path, "conf.d/20.toml", '[maps]\nlisten = "x"\n')
    write(tmp_path, "conf.d/10.toml", '[texts]\nhelp_url = "x"\n[banner]\ngoodbye = "{x}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(etc_dir=tmp_path)
    assert [p.split(": ")[0] for p in caught.value.problems] == [
        "config.toml:2",
        "conf.d/10.toml:2",
        "conf.d/10.toml:4",
        "conf.d/20.toml:2",
    ]


def test_a_problem_is_blamed_on_the_file_that_set_the_key(tmp_path: Path) -> None:
    """When a later file overrides a key, problems point at the later file."""
    write(tmp_path, "config.toml", '[texts.code.550]\nexternal = "ok"\n')
    write(tmp_path, "conf.d/10.toml", '\n\n[texts.code.550]\ninternal = "{bad}"\n')
    assert check_config(etc_dir=tmp_path).problems == [
        "conf.d/10.toml:4: texts.code.550.internal: unknown placeholder {bad}"
    ]


# --- reload ------------------------------------------------------------------------------------


def test_reload_or_keep(tmp_path: Path) -> None:
    """SIGHUP: a good file is taken, a bad one keeps the running config and reports."""
    file = write(tmp_path, "c.toml", "[milter]\ntimeout = 100\n")
    current = Config()
    errors: list[ConfigError] = []
    fresh = reload_or_keep(current, file, errors.append)
    assert fresh.milter.timeout == 100
    file.write_text("[milter]\ntimeout = -3\n")
    assert reload_or_keep(fresh, file, errors.append) is fresh
    assert [e.problems for e in errors] == [
        [f"{file}:2: milter.timeout: must be a positive number of seconds"]
    ]


# --- line numbers ---------------------------------------------------------------------------

DOC = """\
# comment
top = 1
[texts]
help_url = "x"
[texts.reason.user_unknown]
external = \"\"\"
[milter]
listen = "this is inside a string"
\"\"\"
internal = "y"
[texts.enhanced."5.7.1"]
external = "z"
[[rules]]
name = "a"
[[rules]]
name = "b"
[rules.extra]
deep = 1
[inline]
tbl = { a = 1 }
dotted.key = 2
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("top",), 2),
        (("texts",), 3),
        (("texts", "help_url"), 4),
        (("texts", "reason", "user_unknown", "external"), 6),
        (("texts", "reason", "user_unknown", "internal"), 10),
        (("texts", "reason", "user_unknown", "missing"), 5),
        (("texts", "enhanced", "5.7.1", "external"), 12),
        (("rules", 0, "name"), 14),
        (("rules", 1, "name"), 16),
        (("rules", 1), 15),
        (("rules", 1, "extra", "deep"), 18),
        (("inline", "tbl", "a"), 20),
        (("inline", "dotted", "key"), 21),
        (("milter", "listen"), None),
    ],
)
def test_find_line(path: tuple[str | int, ...], line: int | None) -> None:
    """Keys, tables, quoted keys, arrays of tables and dotted keys are found; strings skipped."""
    assert find_line(DOC, path) == line


def test_a_directory_where_a_file_should_be(tmp_path: Path) -> None:
    """config.toml that is a directory is a problem, not a crash."""
    (tmp_path / "config.toml").mkdir()
    assert check_config(etc_dir=tmp_path).problems == ["config.toml: cannot read: Is a directory"]


# --- no input makes validation crash ----------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "listen", "timeout", "same_line", "output", "logs", "journal", "journal_unit",
        "state_dir", "default_language", "internal_networks", "help_url", "greeting",
        "goodbye", "external", "internal", "name", "stage", "action", "code", "enhanced",
        "reason", "text", "sender", "recipient", "helo", "client_network", "size_over",
        "authenticated", "bogus",
    ]
)  # fmt: skip
_SCALARS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["inet:1@x", "unix:/x", "5.7.1", "X.1.1", "mail", "reject", "{code}", "/("]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3))
_TABLE_NAMES = st.sampled_from(
    [
        "milter", "maps", "policy", "metrics", "events", "follow", "texts", "banner",
        "texts.default", "texts.reason.user_unknown", "texts.reason.nope",
        'texts.enhanced."5.7.1"', 'texts.enhanced."9.9"', "texts.code.550", "texts.code.abc",
        "texts.default.lang.de", "texts.reason.blocked.lang.x", "rules", "[rules]", "other",
    ]
)  # fmt: skip


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value) if "e" in repr(value) or "." in repr(value) else f"{value}.0"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


_DOCUMENTS = st.lists(
    st.tuples(_TABLE_NAMES, st.dictionaries(_KEYS, _VALUES, max_size=5)), max_size=6
).map(
    lambda tables: "".join(
        f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in body.items())
        for name, body in tables
    )
)


@settings(max_examples=300, deadline=None)
@given(document=_DOCUMENTS)
def test_validation_never_crashes(document: str) -> None:
    """Any document gives a Config or problem lines that name the file; never an exception."""
    config, problems = validate([default_source(), ConfigSource("x.toml", document)])
    assert (config is None) == bool(problems)
    assert all(p.startswith(("x.toml", DEFAULTS_LABEL)) and "\n" not in p for p in problems)
