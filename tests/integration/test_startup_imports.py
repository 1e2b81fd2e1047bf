"""What a command imports at start: explain needs no daemon, no daemon needs rich."""

from __future__ import annotations

import subprocess
import sys

#: Modules ``smtp-policy explain`` has no use for: daemons, configuration, event output.
NOT_FOR_EXPLAIN = (
    "asyncio",
    "structlog",
    "smtp_policy.adapters",
    "smtp_policy.config",
    "smtp_policy.emit",
    "smtp_policy.commands.milter",
)


def _modules_after(code: str) -> set[str]:
    program = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    return set(proc.stdout.split())


def test_explain_imports_no_daemon() -> None:
    loaded = _modules_after(
        "import io, sys\nfrom smtp_policy.cli import main\n"
        "sys.stdout = io.StringIO()\nmain(['explain', '--json', '550 5.1.1 unknown'])\n"
        "sys.stdout = sys.__stdout__"
    )
    assert "smtp_policy.commands.explain" in loaded
    assert not {name for name in loaded if name.startswith(NOT_FOR_EXPLAIN)}


def test_event_output_does_not_load_rich() -> None:
    loaded = _modules_after("import smtp_policy.emit")
    assert "structlog" in loaded
    assert not {name for name in loaded if name == "rich" or name.startswith("rich.")}
