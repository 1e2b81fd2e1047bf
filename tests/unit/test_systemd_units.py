"""The shipped systemd units, read as data: one per daemon, each well-formed, never root, with
the same hardening, and an ExecStart the command line accepts. systemd-analyze's verdict on
them is tests/integration/test_systemd_hardening.py."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from smtp_policy.cli import COMMANDS, build_parser

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "systemd.md"
DAEMONS = ("milter", "maps", "policy", "follow", "proxy")
DEFAULT_DAEMONS = {"milter", "maps", "follow"}  # the target starts these; the rest are opt-in
PROXY = "smtp-policy-proxy.service"

#: Keys systemd reads as lists, where each assignment adds (and an empty one resets): the only
#: keys a section may set more than once. Any other key set twice silently keeps the last.
LIST_KEYS = frozenset(
    {
        *("Documentation", "Wants", "Requires", "After", "Before", "PartOf", "WantedBy"),
        *("Environment", "EnvironmentFile", "LoadCredential", "SupplementaryGroups"),
        *("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecStartPre"),
        *("SystemCallFilter", "RestrictAddressFamilies", "IPAddressAllow", "IPAddressDeny"),
        *("CapabilityBoundingSet", "AmbientCapabilities"),
    }
)

#: The sandbox every unit shares, value for value; the proxy differs only in PROXY_ONLY.
HARDENING = (
    *("NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem"),
    *("ProtectHome", "PrivateTmp", "PrivateDevices", "DevicePolicy", "ProtectKernelTunables"),
    *("ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock"),
    *("ProtectHostname", "ProtectProc", "ProcSubset", "RestrictAddressFamilies"),
    *("RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality"),
    *("MemoryDenyWriteExecute", "RemoveIPC", "KeyringMode", "SystemCallArchitectures"),
    *("SystemCallFilter", "SystemCallErrorNumber", "IPAddressDeny", "IPAddressAllow", "UMask"),
)
PROXY_ONLY = {
    "CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"],
    "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"],
    "IPAddressAllow": ["any"],  # it faces the internet
}


@dataclass(frozen=True)
class Unit:
    """A unit file as systemd reads it: section -> key -> every assignment, in order."""

    name: str
    sections: dict[str, dict[str, list[str]]]

    def values(self, key: str, section: str = "Service") -> list[str]:
        """Every assignment of ``key`` in ``section``."""
        return self.sections.get(section, {}).get(key, [])

    def value(self, key: str, section: str = "Service") -> str:
        """The one assignment of ``key`` in ``section``."""
        values = self.values(key, section)
        assert len(values) == 1, f"{self.name}: [{section}] {key}= is set {len(values)} times"
        return values[0]

    def environment(self) -> dict[str, str]:
        """The unit's Environment= defaults (the EnvironmentFile may override them)."""
        return dict(
            word.split("=", 1) for line in self.values("Environment") for word in shlex.split(line)
        )


def parse_unit(path: Path) -> Unit:
    """Parse ``path`` like systemd: sections, comments, and lines continued by a backslash."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = re.sub(r"\\\n", " ", path.read_text())
    for number, raw in enumerate(logical.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if header := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(header[1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"{path.name}:{number}: not in a section: {line}"
        current.setdefault(key.strip(), []).append(" ".join(value.split()))
    return Unit(path.name, sections)


@cache
def units() -> dict[str, Unit]:
    """Every shipped .service, by daemon name."""
    return {
        path.stem.removeprefix("smtp-policy-"): parse_unit(path)
        for path in sorted(SYSTEMD.glob("smtp-policy-*.service"))
    }


def exec_argv(unit: Unit) -> list[str]:
    """ExecStart as the service sees it: Environment= defaults and the credentials directory
    substituted (``${VAR}`` is one word, ``$VAR`` splits into words, as systemd does)."""
    env = unit.environment() | {"CREDENTIALS_DIRECTORY": f"/run/credentials/{unit.name}"}
    argv: list[str] = []
    for word in shlex.split(unit.value("ExecStart")):
        if bare := re.fullmatch(r"\$(\w+)", word):
            argv.extend(env[bare[1]].split())
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], word))
    return argv


def test_every_daemon_has_a_unit_and_only_daemons_do() -> None:
    """milter, maps, policy, follow and proxy each have a unit, and nothing else does."""
    assert sorted(units()) == sorted(DAEMONS)


def test_target_starts_the_defaults_and_every_unit_joins_it() -> None:
    """The target wants milter, maps and follow; policy and proxy join it once enabled."""
    target = parse_unit(SYSTEMD / "smtp-policy.target")
    wanted = " ".join(target.values("Wants", "Unit")).split()
    assert set(wanted) == {f"smtp-policy-{d}.service" for d in DEFAULT_DAEMONS}
    assert target.value("WantedBy", "Install") == "multi-user.target"
    text = (SYSTEMD / "smtp-policy.target").read_text()
    for daemon in set(DAEMONS) - DEFAULT_DAEMONS:
        assert f"systemctl enable --now smtp-policy-{daemon}" in text
        assert f"systemctl enable --now smtp-policy-{daemon}" in DOCS.read_text()
    for unit in units().values():
        assert unit.value("WantedBy", "Install") == "smtp-policy.target"
        assert unit.value("PartOf", "Unit") == "smtp-policy.target"


@pytest.mark.parametrize(
    "path",
    [*sorted(SYSTEMD.glob("*.service")), SYSTEMD / "smtp-policy.target"],
    ids=lambda p: p.name,
)
def test_no_key_is_set_twice(path: Path) -> None:
    """A key systemd does not accumulate is set once per section (twice, the first is lost)."""
    unit = parse_unit(path)
    for section, keys in unit.sections.items():
        for key, values in keys.items():
            assert key in LIST_KEYS or len(values) == 1, f"{path.name}: [{section}] {key}= twice"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_runs_as_smtp_policy_never_root(daemon: str) -> None:
    """User= and Group= smtp-policy, no dynamic user, and no command run with full privileges."""
    unit = units()[daemon]
    assert unit.value("User") == "smtp-policy"
    assert unit.value("Group") == "smtp-policy"
    assert not unit.values("DynamicUser")
    assert unit.value("NoNewPrivileges") == "yes"
    for key in ("ExecStart", "ExecReload", "ExecStartPre", "ExecStartPost", "ExecStop"):
        for command in unit.values(key):
            assert command[0] not in "+!", f"{unit.name}: {key}={command} runs as root"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_exec_start_is_a_command_line_the_cli_accepts(daemon: str) -> None:
    """ExecStart runs `smtp-policy DAEMON` with only options that subcommand accepts."""
    argv = exec_argv(units()[daemon])
    assert Path(argv[0]).name == "smtp-policy"
    assert argv[1] == daemon and daemon in COMMANDS
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"smtp-policy refuses the ExecStart of {daemon}: {' '.join(argv)}")
    assert args.command == daemon


@pytest.mark.parametrize("daemon", DAEMONS)
def test_file_descriptor_limit_is_sized(daemon: str) -> None:
    """LimitNOFILE= is set (at most the usual 1024), with a comment saying why."""
    unit = units()[daemon]
    limit = int(unit.value("LimitNOFILE"))
    assert 64 <= limit <= 1024
    text = (SYSTEMD / unit.name).read_text()
    assert re.search(r"#[^\n]*\n(#[^\n]*\n)*LimitNOFILE=", text), f"{unit.name}: say why"


def test_proxy_limit_covers_two_descriptors_per_session() -> None:
    """The proxy holds a client and an upstream socket per session, up to --max-connections."""
    unit = units()["proxy"]
    args = build_parser().parse_args(exec_argv(unit)[1:])
    assert int(unit.value("LimitNOFILE")) >= 2 * args.max_connections + 64


def test_hardening_is_the_same_everywhere() -> None:
    """Every hardening key has one value in all units; the proxy differs only where it must."""
    base = units()["maps"]
    for daemon, unit in units().items():
        for key in HARDENING:
            expected = PROXY_ONLY[key] if daemon == "proxy" and key in PROXY_ONLY else None
            assert unit.values(key) == (expected or base.values(key)), f"{unit.name}: {key}="
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert base.values(key) == [""]
    assert base.value("IPAddressAllow") == "localhost"
    assert base.value("IPAddressDeny") == "any"


def test_every_hardening_key_is_documented() -> None:
    """docs/systemd.md names each hardening key the units set."""
    text = DOCS.read_text()
    missing = [key for key in HARDENING if f"{key}=" not in text]
    assert not missing


def test_proxy_binds_port_25_by_capability_and_reads_its_key_as_a_credential() -> None:
    """Only the proxy has a capability, CAP_NET_BIND_SERVICE; its TLS files come through
    LoadCredential= and ExecStart names them in $CREDENTIALS_DIRECTORY."""
    for daemon, unit in units().items():
        granted = ["CAP_NET_BIND_SERVICE"] if daemon == "proxy" else [""]
        assert unit.values("CapabilityBoundingSet") == granted, unit.name
        assert unit.values("AmbientCapabilities") == granted, unit.name
        assert daemon == "proxy" or not unit.values("LoadCredential"), unit.name
    proxy = units()["proxy"]
    credentials = dict(line.split(":", 1) for line in proxy.values("LoadCredential"))
    assert set(credentials) == {"tls-cert", "tls-key"}
    assert all(path.startswith("/") for path in credentials.values())
    args = build_parser().parse_args(exec_argv(proxy)[1:])
    assert args.tls_key == f"/run/credentials/{PROXY}/tls-key"
    assert args.tls_cert == f"/run/credentials/{PROXY}/tls-cert"
    assert args.listen == "inet:0.0.0.0:25"


def test_proxy_environment_file_example_names_only_what_the_unit_reads() -> None:
    """smtp-policy-proxy.default shows (commented out) exactly the unit's Environment=
    defaults, and the unit reads /etc/default/smtp-policy-proxy, optionally."""
    proxy = units()["proxy"]
    assert proxy.values("EnvironmentFile") == ["-/etc/default/smtp-policy-proxy"]
    example = (SYSTEMD / "smtp-policy-proxy.default").read_text()
    assert dict(re.findall(r"^#(\w+)=(.*)$", example, re.MULTILINE)) == proxy.environment()
