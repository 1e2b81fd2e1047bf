"""scripts/demo says what scripts/install-deps installs and creates, before it runs it."""

from __future__ import annotations

import re
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_demo_notice_names_what_install_deps_creates() -> None:
    demo = (SCRIPTS / "demo").read_text()
    deps = (SCRIPTS / "install-deps").read_text()
    user = re.search(r"useradd .*?(\w+)\s*$", deps, re.S | re.M)
    assert user is not None
    assert f'"{user.group(1)}"' in demo
    debs = re.search(r"SMTP_POLICY_SENDMAIL_DEBS:-([^}]+)}", deps)
    assert debs is not None
    assert debs.group(1) in demo
    assert ".venv" in demo
    # The package list is read from install-deps itself, and the notice comes first.
    assert "sed -n '/^packages=(/,/^)/p' scripts/install-deps" in demo
    assert "packages=(" in deps
    assert demo.index("cat <<EOF") < demo.index("bash scripts/install-deps\n")
