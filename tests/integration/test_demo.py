"""``smtp-policy demo`` end to end: a private Postfix with the milter, the maps server and the
follower, as a newcomer runs it (root and Postfix needed, like every test here)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.postfix


def test_demo_runs_end_to_end(postfix_available: None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "smtp_policy", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
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
