"""``smtp-policy demo`` end to end: a private Postfix with the milter, the maps server and the
follower, as a newcomer runs it (root and Postfix needed, like every test here)."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smtp_policy.lab import postfix as lab_postfix

pytestmark = pytest.mark.postfix

ETC_POSTFIX = Path("/etc/postfix")


def _snapshot(root: Path) -> dict[str, tuple[bytes | str, int, int]]:
    """Every entry under ``root``: its bytes (or link target), mode and mtime."""
    found: dict[str, tuple[bytes | str, int, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            content: bytes | str = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = "<dir>"
        found[str(path.relative_to(root))] = (content, st.st_mode, st.st_mtime_ns)
    return found


def test_demo_runs_end_to_end_and_leaves_etc_postfix_as_it_was(postfix_available: None) -> None:
    # Other private Postfix instances register in /etc/postfix/main.cf under this lock: hold it,
    # so that only the demo could change /etc/postfix while it runs (the demo itself takes none).
    with lab_postfix._REGISTRY_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = _snapshot(ETC_POSTFIX)
        done = subprocess.run(
            [sys.executable, "-m", "smtp_policy", "demo"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        after = _snapshot(ETC_POSTFIX)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the demo changed /etc/postfix: {changed}"
    # It says what it creates before creating it.
    assert out.index("What this part creates (/etc/postfix is not changed)") < out.index(
        "Postfix listens on 127.0.0.1:"
    )
    assert "Traceback" not in out
    # Part 1 stays first.
    assert out.index("Part 1: explaining real-world replies") < out.index("Part 2:")
    # Postfix's own rejection, with the maps server's footer.
    assert "Recipient address rejected: User unknown" in out
    assert "The recipient's address does not exist" in out
    assert "https://help.example.com/mail-errors#user_unknown" in out
    # The policy rule's text, as the client saw it.
    assert "550-5.7.1 Sorry, we do not accept mail from eve@spam.example." in out
    # The friendlier bounce, with the remote's diagnostic intact.
    body = " ".join(out.split())
    assert "address does not exist" in body
    assert "Status: 5.1.1" in out
    assert "Diagnostic-Code: smtp; 550-5.1.1" in out
    # At least one event from each source.
    for source in ("milter", "maps", "log"):
        assert re.search(rf"^  {source} +(reply|lookup|message) ", out, re.M), source


def test_demo_without_root_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from smtp_policy.commands import demo

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(demo.DemoError, match=r"^not root"):
        demo.live_demo(keep=False)


def test_demo_explain_only_runs_part_1_alone() -> None:
    """``demo --explain-only`` needs neither root nor Postfix and starts nothing."""
    done = subprocess.run(
        [sys.executable, "-m", "smtp_policy", "demo", "--explain-only"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Part 1: explaining real-world replies" in done.stdout
    assert "Part 2:" not in done.stdout
    assert '"reason": "user_unknown"' in done.stdout
