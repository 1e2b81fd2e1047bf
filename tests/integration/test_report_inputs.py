"""Every input admins feed pflogsumm, fed to report and trace; and the sample's numbers beside
pflogsumm's own on the same file."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smtp_policy.adapters.follow.pipeline import replay
from smtp_policy.data import default_knowledge
from smtp_policy.maillog.tally import Tally
from tests.helpers import SAMPLES

SAMPLE = SAMPLES / "postfix-3.7-maillog-sample.log"
PFLOGSUMM = shutil.which("pflogsumm") or "/usr/sbin/pflogsumm"


def run(
    args: list[str], *, stdin: bytes = b"", shell: bool = False
) -> subprocess.CompletedProcess[str]:
    """``python -m smtp_policy ARGS`` (or a bash line using ``$SP`` for it); never a traceback."""
    if shell:
        command = ["bash", "-c", args[0]]
        env = {"SP": f"{sys.executable} -m smtp_policy", "PATH": "/usr/bin:/bin"}
    else:
        command, env = [sys.executable, "-m", "smtp_policy", *args], None
    proc = subprocess.run(
        command,
        input=stdin.decode("latin-1") if stdin else "",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env} if env else None,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _report(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert "Mail log report, 2026-11-28" in proc.stdout
    return proc.stdout


def test_report_reads_stdin() -> None:
    """``report -``: the log on standard input (``zcat mail.log.*.gz | smtp-policy report -``)."""
    with_file = _report(run(["report", str(SAMPLE)]))
    assert _report(run(["report", "-"], stdin=SAMPLE.read_bytes())) == with_file


def test_report_reads_a_process_substitution() -> None:
    """``report <(cat file)``: a pipe, not a regular file."""
    with_file = _report(run(["report", str(SAMPLE)]))
    assert _report(run([f"$SP report <(cat {SAMPLE})"], shell=True)) == with_file


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [(".1", gzip.compress), (".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)],
)
def test_report_reads_rotated_archives(tmp_path: Path, suffix: str, compress: object) -> None:
    """gzip, bzip2 and xz, known by their first bytes (``mail.log.1`` may be gzip too)."""
    assert callable(compress)
    archive = tmp_path / f"mail.log{suffix}"
    archive.write_bytes(compress(SAMPLE.read_bytes()))
    assert _report(run(["report", str(archive)])) == _report(run(["report", str(SAMPLE)]))


def test_several_files_in_order(tmp_path: Path) -> None:
    """Two halves, the older gzipped, read in order: the same report as the whole file."""
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    old, new = tmp_path / "mail.log.1.gz", tmp_path / "mail.log"
    old.write_bytes(gzip.compress(b"".join(lines[:1500])))
    new.write_bytes(b"".join(lines[1500:]))
    assert _report(run(["report", str(old), str(new)])) == _report(run(["report", str(SAMPLE)]))


def test_a_file_without_mail_log_lines_is_a_warning_and_exit_1(tmp_path: Path) -> None:
    """/etc/passwd-like text: one warning line, exit 1, no all-zero report."""
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/false\n")
    proc = run(["report", str(passwd)])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"smtp-policy report: warning: {passwd}: no Postfix or Sendmail log line"
    ]
    assert proc.stdout == ""
    trace = run(["trace", "ABCDEF", str(passwd)])
    assert trace.returncode == 1 and "no Postfix or Sendmail log line" in trace.stderr


def test_truncated_gzip_keeps_what_it_can_and_warns(tmp_path: Path) -> None:
    """A gzip cut short: a clear warning, the lines before the damage reported, exit 1."""
    cut = tmp_path / "mail.log.2.gz"
    cut.write_bytes(gzip.compress(SAMPLE.read_bytes())[:20_000])
    proc = run(["report", str(cut)])
    assert proc.returncode == 1
    assert "damaged gzip archive" in proc.stderr and str(cut) in proc.stderr
    assert "Mail log report, 2026-11-28" in proc.stdout


def test_follow_once_without_from_start_is_a_usage_error(tmp_path: Path) -> None:
    """--once without --from-start (and no --state) would read nothing: say so, exit 1."""
    proc = run(["follow", "--once", "--events", str(tmp_path / "e.jsonl"), str(SAMPLE)])
    assert proc.returncode == 1
    assert "--once without --from-start" in proc.stderr
    missing = run(["follow", "--once", "--from-start", "--events", "-", str(tmp_path / "no.log")])
    assert missing.returncode == 1 and "no.log" in missing.stderr


def _pflogsumm_totals(path: Path) -> dict[str, int]:
    out = subprocess.run(
        [PFLOGSUMM, str(path)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    grand = out.split("Grand Totals", 1)[1].split("Per-Hour", 1)[0]
    totals = {m[2]: int(m[1]) for m in re.finditer(r"^\s*(\d+)\s+(\w+)", grand, re.M)}
    deferrals = re.search(r"deferred\s+\((\d+)\s+deferrals\)", grand)
    assert deferrals is not None
    totals["deferrals"] = int(deferrals[1])
    return totals


@pytest.mark.skipif(not Path(PFLOGSUMM).exists(), reason="pflogsumm is not installed")
def test_the_sample_counts_as_pflogsumm_does() -> None:
    """received, delivered, deferred (and deferrals), bounced as pflogsumm says; rejected is
    pflogsumm's plus the milter RCPT rejects it does not count."""
    theirs = _pflogsumm_totals(SAMPLE)
    tally = Tally()
    for event in replay([str(SAMPLE)], default_knowledge(), year=2026):
        tally.add(event)
    ours = tally.totals()
    for key in ("received", "delivered", "deferred", "deferrals", "bounced"):
        assert ours[key] == theirs[key], key
    milter_rcpt = SAMPLE.read_text().count("milter-reject: RCPT")
    assert milter_rcpt > 0
    assert ours["rejected"] == theirs["rejected"] + milter_rcpt


def test_progress_line_only_on_a_terminal(tmp_path: Path) -> None:
    """stderr a terminal: a progress line (tqdm); stderr a pipe: nothing (checked above)."""
    import fcntl
    import pty
    import struct
    import termios

    big = tmp_path / "mail.log"
    big.write_bytes(SAMPLE.read_bytes() * 20)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "smtp_policy", "report", str(big)],
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            timeout=120,
            check=False,
        )
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
    assert proc.returncode == 0
    assert b"B/s" in seen or b"%" in seen, seen[-300:]
    assert b"Traceback" not in seen
    quiet = run(["report", str(big)])
    assert quiet.stderr == ""
