"""report beside pflogsumm on the same files: the same grand totals where both count the same
thing, and the documented differences (docs/report.md, "Beside pflogsumm") where they do not."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import SAMPLES

PFLOGSUMM = Path("/usr/sbin/pflogsumm")
SAMPLE = SAMPLES / "postfix-3.7-maillog-sample.log"
SECTIONS = SAMPLES / "report-sections.log"
#: pflogsumm's grand-total labels and the report's keys for the same numbers.
SAME = {
    "received": "received",
    "delivered": "delivered",
    "forwarded": "forwarded",
    "bounced": "bounced",
    "reject warnings": "warned",
    "held": "held",
    "discarded": "discarded",
    "bytes received": "bytes_received",
    "bytes delivered": "bytes_delivered",
    "recipients": "recipients",
    "recipient hosts/domains": "recipient_domains",
}


def pflogsumm(log: Path) -> dict[str, int]:
    """pflogsumm's grand totals, by label (``deferrals`` from ``deferred (N deferrals)``)."""
    if not PFLOGSUMM.exists():
        pytest.fail("pflogsumm is not installed: run scripts/install-deps")
    out = subprocess.run(
        [str(PFLOGSUMM), str(log)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    totals = out[: out.index("Per-Hour Traffic")]
    found = {
        m[2].strip(): int(m[1]) for m in re.finditer(r"^\s*(\d+)[kKmM]?\s+([a-z /]+)", totals, re.M)
    }
    deferrals = re.search(r"\((\d+)\s+deferrals\)", totals)
    assert deferrals is not None
    found["deferrals"] = int(deferrals[1])
    return found


def report(log: Path, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "smtp_policy", "report", "--json", *extra, str(log)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.mark.parametrize(
    ("log", "extra"), [(SAMPLE, ()), (SECTIONS, ("--year", "2026"))], ids=["sample", "sections"]
)
def test_grand_totals_agree_with_pflogsumm(log: Path, extra: tuple[str, ...]) -> None:
    """Every total both tools count the same way is the same number."""
    theirs = pflogsumm(log)
    ours = report(log, *extra)["totals"]
    assert {label: theirs[label] for label in SAME} == {
        label: ours[key] for label, key in SAME.items()
    }
    assert (theirs["deferred"], theirs["deferrals"]) == (
        ours["deferred_messages"],
        ours["deferred"],
    )


def test_where_the_sample_differs_it_is_milter_rejects() -> None:
    """pflogsumm misses milter rejects at RCPT; a message a milter refused at end-of-message
    is received (one definition, pflogsumm's: a queue id and a client) and rejected in both,
    and the report also shows it as refused whole (``rejected_messages``)."""
    theirs, ours = pflogsumm(SAMPLE), report(SAMPLE)["totals"]
    lines = SAMPLE.read_text().splitlines()
    at_rcpt = sum("milter-reject: RCPT" in line for line in lines)
    at_eom = sum("milter-reject: END-OF-MESSAGE" in line for line in lines)
    assert at_rcpt and at_eom
    assert ours["rejected"] == theirs["rejected"] + at_rcpt
    assert ours["received"] == theirs["received"]
    assert ours["rejected_messages"] == at_eom
