"""The HTML report as a person sees it: rendered by a real browser (headless Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smtp_policy.maillog.report import TITLES, TOTAL_ROWS
from tests.helpers import SAMPLES

#: Debian's chromium package (scripts/install-deps installs it).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HEADLESS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio")


def report_html(tmp_path: Path, log: Path, *extra: str) -> Path:
    """``smtp-policy report --html LOG`` written to a file, as an operator would."""
    proc = subprocess.run(
        [sys.executable, "-m", "smtp_policy", "report", "--html", *extra, str(log)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    page = tmp_path / "report.html"
    page.write_text(proc.stdout, encoding="utf-8")
    return page


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a private profile under ``tmp_path``; it exits by itself."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run scripts/install-deps")
    profile = tmp_path / "profile"
    return subprocess.run(
        [CHROMIUM, *HEADLESS, f"--user-data-dir={profile}", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("log", "extra"),
    [
        (SAMPLES / "postfix-3.7-maillog-sample.log", ()),
        (SAMPLES / "report-sections.log", ("--year", "2026")),
    ],
    ids=["postfix-sample", "every-section"],
)
def test_every_section_is_in_the_rendered_dom(
    tmp_path: Path, log: Path, extra: tuple[str, ...]
) -> None:
    """The DOM Chromium builds holds every section with its title, every total's label, the
    chart's axes and both directions' series, and no raw JSON key."""
    page = report_html(tmp_path, log, *extra)
    proc = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout.replace("&#x27;", "'").replace("&#39;", "'")
    for key, title in TITLES.items():
        assert re.search(rf'<section id="{key}"><h2>{re.escape(title)}</h2>', dom), key
    for label, _, _ in TOTAL_ROWS:
        assert f"<th>{label}</th>" in dom, label
    svg = dom[dom.index("<svg") : dom.index("</svg>")]
    assert "Time (UTC" in svg and "Refusals per " in svg
    assert 'fill="#e15759"' in svg and 'fill="#4e79a7"' in svg  # upstream, downstream
    assert "deferred_messages" not in dom


def test_screenshot_renders(tmp_path: Path) -> None:
    """A full-page screenshot is written (look at it with an image viewer when changing CSS)."""
    page = report_html(tmp_path, SAMPLES / "report-sections.log", "--year", "2026")
    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, "--window-size=1000,3000", f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
