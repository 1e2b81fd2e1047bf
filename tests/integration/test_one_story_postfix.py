"""One rejection, one story; and the DSN filter leaves what log tools count alone.

A real private Postfix with our milter (rules) and our maps server (reject footers, DSN filter)
wired in, all three reading one configuration:

* a milter rule rejects with its own multi-line text: the client reads the rule's text and no
  footer, and the milter's event, the maps server's lookup event and the log follower's reply
  event name the same reason and rule;
* Postfix's own rejection (unknown user) still gets its footer;
* the same traffic to a scripted remote, with and without the DSN filter: pflogsumm's totals
  and the follower's reasons are the same (by default the filter rewrites bounces only, and
  keeps the remote's reply in its text).
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from smtp_policy.lab.remote import ScriptedServer
from tests.helpers import Daemon, configured_daemon, maps_table, read_events, submit

pytestmark = pytest.mark.postfix

PFLOGSUMM = "/usr/sbin/pflogsumm"
SENDER = "sender@local.test"
CONFIG = r'''
[texts]
help_url = "https://help.local.test/mail-errors#{reason}"

[[rules]]
name = "no-spam-test"
stage = "rcpt"
sender = ["*@spam.test"]
action = "reject"
code = 554
enhanced = "5.7.1"
reason = "blocked"
text = """We do not accept mail from {sender}.
Please write to {recipient} another way.
Details: {help_url}"""
'''


@pytest.fixture(name="tmp", scope="module")
def _tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("one-story")
    (tmp / "config.toml").write_text(CONFIG)
    return tmp


@pytest.fixture(name="maps", scope="module")
def _maps(tmp: Path) -> Iterator[Daemon]:
    yield from configured_daemon("maps", tmp)


@pytest.fixture(name="milter", scope="module")
def _milter(tmp: Path) -> Iterator[Daemon]:
    yield from configured_daemon("milter", tmp)


@pytest.fixture(name="pf", scope="module")
def _pf(maps: Daemon, milter: Daemon, make_module_postfix: PostfixFactory) -> PrivatePostfix:
    milters = (
        f"{{ inet:127.0.0.1:{milter.tcp_port}, default_action=accept, connect_timeout=5s, "
        "command_timeout=10s, content_timeout=30s }"
    )
    return make_module_postfix(milters=milters, reject_footer_maps=maps_table(maps, "footer"))


def rcpt_reply(pf: PrivatePostfix, sender: str, rcpt: str) -> tuple[int, list[str]]:
    """RCPT TO's reply, one string per line (smtplib drops the codes)."""
    with smtplib.SMTP("127.0.0.1", pf.smtp_port, local_hostname="client.test", timeout=20) as s:
        s.ehlo()
        s.mail(sender)
        code, text = s.rcpt(rcpt)
    return code, text.decode().splitlines()


def follow(log: Path, tmp: Path, *config: str) -> list[dict[str, Any]]:
    """The follower's events on a whole log (``--once``), reading ``config`` if given."""
    out = tmp / f"follow-{uuid.uuid4().hex[:8]}.jsonl"
    argv = [sys.executable, "-m", "smtp_policy", "follow", "--log", str(log), "--from-start"]
    argv += ["--once", "--events", str(out), *config]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return read_events(out)


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_a_rule_rejection_tells_one_story(
    pf: PrivatePostfix, maps: Daemon, milter: Daemon, tmp: Path
) -> None:
    """The client reads the rule's text and no footer; three events agree on reason and rule."""
    sender = f"eve-{uuid.uuid4().hex[:6]}@spam.test"
    code, lines = rcpt_reply(pf, sender, "alice@local.test")
    assert code == 554
    assert lines == [
        f"5.7.1 We do not accept mail from {sender}.",
        "5.7.1 Please write to alice@local.test another way.",
        "5.7.1 Details: https://help.local.test/mail-errors#blocked",
    ]
    ours = [e for e in milter.events.read() if e.get("by") == "policy" and e.get("sender")]
    (decision,) = [e for e in ours if sender in e["sender"]]
    lookups = wait_for(
        lambda: [
            e
            for e in maps.events.read()
            if e.get("map") == "footer" and sender in str(e.get("text"))
        ]
    )
    (lookup,) = lookups
    assert lookup["status"] == "NOTFOUND" and lookup.get("friendly") is None
    line = pf.wait_for_log(rf"milter-reject: RCPT from .*{re.escape(sender)}")[-1]
    log = tmp / "rule.log"
    log.write_text(line + "\n")
    (reply,) = [e for e in follow(log, tmp, "--config", str(tmp / "config.toml"))
                if e["event"] == "reply"]  # fmt: skip
    stories = {(e["source"], e.get("reason"), e.get("rule")) for e in (decision, lookup, reply)}
    assert stories == {
        ("milter", "blocked", "no-spam-test"),
        ("maps", "blocked", "no-spam-test"),
        ("log", "blocked", "no-spam-test"),
    }
    # joined: the milter's session and the follower's line share client, sender and recipient
    assert reply["sender"].strip("<>") == decision["sender"].strip("<>") == sender
    assert reply["recipient"].strip("<>") == decision["recipient"].strip("<>")
    assert decision["text"].replace("\n", "??") in line


def test_postfix_own_rejection_keeps_its_footer(pf: PrivatePostfix, maps: Daemon) -> None:
    code, lines = rcpt_reply(pf, SENDER, f"nosuch-{uuid.uuid4().hex[:6]}@local.test")
    assert code == 550
    assert "User unknown" in lines[0]
    assert len(lines) >= 2
    assert "https://help.local.test/mail-errors#user_unknown" in lines[-1]


# -- the DSN filter and the mail log ------------------------------------------------------------

#: Recipients at the scripted remote: two bounces, two deferrals, one delivered.
TRAFFIC = ("nouser", "block", "full", "grey", "someone")


def run_traffic(pf: PrivatePostfix) -> list[str]:
    """Send TRAFFIC; wait until each recipient's outcome is logged; the log's lines."""
    for local in TRAFFIC:
        qid = submit(pf.smtp_port, SENDER, f"{local}@remote.test")
        outcome = rf"{qid}: to=<{local}@remote\.test>, .*status=(sent|bounced|deferred)"
        if "status=deferred" in pf.wait_for_log(outcome)[-1]:
            pf.delete_queued(qid)  # one deferral each, however fast the queue manager retries
    pf.wait_for_log(r"sender non-delivery notification", count=2)
    pf.delete_queued()
    return pf.maillog_lines()


def pflogsumm_totals(log: Path) -> dict[str, int]:
    """pflogsumm's "Grand Totals": messages received, delivered, deferred, bounced, rejected...

    Byte counts are left out: the bounce messages Postfix delivers locally carry our words, so
    "bytes delivered" grows by their size (the one total the filter changes, by design).
    """
    out = subprocess.run(
        [PFLOGSUMM, "--problems-first", str(log)], capture_output=True, text=True, check=True
    ).stdout
    totals = {}
    section = out.split("Grand Totals", 1)[1].split("Per-Day", 1)[0]
    for m in re.finditer(r"^\s+(\d+)\s{2,}(\w[\w -]*?)\s*(?:\(.*\))?$", section, re.MULTILINE):
        if not m[2].startswith("bytes"):
            totals[m[2]] = int(m[1])
    return totals


def reasons(events: list[dict[str, Any]]) -> Counter[tuple[str, str | None, str | None]]:
    """(status, enhanced code, reason) of every delivery line the follower read."""
    return Counter(
        (e["status"], e.get("enhanced"), e.get("reason"))
        for e in events
        if e["event"] == "reply" and e["source"] == "log" and e.get("kind") == "delivery"
    )


@pytest.mark.skipif(not Path(PFLOGSUMM).exists(), reason="pflogsumm is not installed")
def test_the_dsn_filter_leaves_log_tools_counts_alone(
    maps: Daemon, make_postfix: PostfixFactory, tmp: Path
) -> None:
    """Same traffic with and without the filter: pflogsumm's totals and our reasons agree."""
    logs = {}
    texts = {}
    for name, status_filter in (("without", None), ("with", maps_table(maps, "dsn"))):
        with ScriptedServer() as remote:
            pf = make_postfix(
                downstream_port=remote.port,
                delivery_status_filter=status_filter,
                main_cf={"smtp_rcpt_timeout": "3s"},
            )
            lines = run_traffic(pf)
            pf.stop()
        logs[name] = tmp / f"{name}.log"
        logs[name].write_text("\n".join(lines) + "\n")
        texts[name] = [ln for ln in lines if "status=" in ln and "remote.test" in ln]
    # the filter did its work: bounces rewritten (remote's reply kept), deferrals not
    bounced = [ln for ln in texts["with"] if "status=bounced" in ln]
    assert len(bounced) == 2
    assert all("said: 55" in ln and not re.search(r"status=bounced \(host ", ln) for ln in bounced)
    deferred = [ln for ln in texts["with"] if "status=deferred" in ln]
    assert deferred and all(re.search(r"status=deferred \(host ", ln) for ln in deferred)
    totals = {name: pflogsumm_totals(log) for name, log in logs.items()}
    assert totals["with"] == totals["without"]
    assert totals["with"]["bounced"] == 2 and totals["with"]["deferred"] == 2
    print(f"pflogsumm totals, with and without the filter: {totals['with']}")
    followed = {name: follow(log, tmp) for name, log in logs.items()}
    assert reasons(followed["with"]) == reasons(followed["without"])
    friendly = [e for e in followed["with"] if e["event"] == "reply" and e.get("friendly")]
    assert len(friendly) == 2  # the two bounces: our words kept beside the reply
