"""The log follower on logs a real private Postfix wrote: every reply explained, one record each.

Traffic: accepted locally, rejected by Postfix (unknown user), relayed to a scripted downstream
server that defers (greylisting) and then accepts, bounced (Gmail-style 550-5.1.1), and expired
(a destination that keeps deferring, with a one-second maximal_queue_lifetime).
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from smtp_policy.lab.remote import ScriptedServer
from tests.helpers import read_events

pytestmark = pytest.mark.postfix

SENDER = "sender@local.test"


def send(pf: PrivatePostfix, rcpt: str) -> tuple[int, str]:
    """One message; returns (code of RCPT or DATA, queue id or "")."""
    body = f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: {uuid.uuid4().hex[:8]}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", pf.smtp_port, local_hostname="client.test", timeout=20) as s:
        s.ehlo()
        s.mail(SENDER)
        code, _ = s.rcpt(rcpt)
        if code != 250:
            return code, ""
        code, reply = s.data(body.encode())
    m = re.search(rb"queued as ([0-9A-F]+)", reply)
    return code, m.group(1).decode() if m else ""


def follow(pf: PrivatePostfix, tmp: Path) -> list[dict[str, Any]]:
    """Replay the instance's maillog with `smtp-policy follow --from-start --once`."""
    out = tmp / "events.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "smtp_policy",
            "follow",
            "--log",
            str(pf.maillog),
            "--from-start",
            "--once",
            "--events",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return read_events(out)


def test_follower_on_a_real_maillog(
    make_postfix: PostfixFactory, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    """Each kind of outcome becomes an explained reply event and one message record."""
    scripted_server.script["slow"] = (
        "450 4.7.1 Greylisted, see http://postgrey.schweikert.ch/help/local.test.html"
    )
    pf = make_postfix(
        downstream_port=scripted_server.port,
        maximal_queue_lifetime="1s",
        bounce_queue_lifetime="1s",
    )
    _, delivered = send(pf, "alice@local.test")
    rejected, _ = send(pf, "nosuchuser@local.test")
    assert rejected == 550
    _, bounced = send(pf, "nouser@remote.test")
    _, greylisted = send(pf, "slow@remote.test")
    _, expired = send(pf, "grey@remote.test")
    pf.wait_for_log(rf"{greylisted}: to=<slow@remote\.test>.*status=deferred")
    pf.wait_for_log(rf"{expired}: to=<grey@remote\.test>.*status=deferred")
    scripted_server.script.pop("slow")  # the greylist lets it through on the retry
    time.sleep(1.5)  # older than maximal_queue_lifetime
    pf.flush()
    pf.wait_for_log(rf"{greylisted}: to=<slow@remote\.test>.*status=sent")
    pf.wait_for_log(rf"{expired}: from=<sender@local\.test>, status=expired")
    pf.wait_for_log(rf"{bounced}: removed")
    pf.wait_for_log(rf"{expired}: removed")
    pf.wait_for_log(rf"{greylisted}: removed")
    events = follow(pf, tmp_path)
    replies = [e for e in events if e["event"] == "reply"]
    records = {e.get("queue_id"): e for e in events if e["event"] == "message"}
    print(f"{len(events)} events: {len(replies)} replies, {len(records)} message records")

    upstream = [e for e in replies if e.get("direction") == "upstream" and e.get("code") == 550]
    assert any(
        e.get("reason") == "user_unknown" and "nosuchuser" in str(e.get("recipient"))
        for e in upstream
    )
    down = [e for e in replies if e.get("direction") == "downstream"]
    assert any(e.get("reason") == "greylisting" and e.get("class") == "transient" for e in down)
    assert any(
        e.get("reason") == "user_unknown"
        and e.get("class") == "permanent"
        and e.get("queue_id") == bounced
        for e in down
    )

    assert records[delivered]["status"] == "delivered"
    assert records[bounced]["status"] == "bounced"
    assert records[greylisted]["status"] == "delivered"
    attempts = records[greylisted]["recipients"][0]["attempts"]
    assert [a["status"] for a in attempts] == ["deferred", "sent"]
    assert records[expired]["status"] == "expired"
    assert all(
        r["complete"]
        for r in records.values()
        if r.get("queue_id") in {delivered, bounced, greylisted, expired}
    )
