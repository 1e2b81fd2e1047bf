"""Our milter engine against a private Postfix: the steps libmilter lost are all recorded.

With "no reply" negotiated, Postfix does not wait for the milter after a step; a client that
pipelines MAIL, RCPT and QUIT makes Postfix write those steps, ABORT and QUIT to the milter
and close its end at once. libmilter polls before it reads and takes POLLHUP on a unix socket
for the end of the session, so it dropped what was still queued; our engine handles every
frame that arrived before it treats end-of-file as the end.
"""

from __future__ import annotations

import shutil
import signal
import smtplib
import socket
import tempfile
from pathlib import Path

import pytest

from smtp_policy.lab.instance import poll
from smtp_policy.lab.postfix import PostfixFactory
from tests.helpers import Daemon, running

pytestmark = pytest.mark.postfix

WAIT = 120.0
ROUNDS = 20


def pipelined_session(port: int, n: int) -> int:
    """EHLO, MAIL, two RCPTs (one unknown to Postfix) and QUIT in one write, replies unread
    until the end; returns the client's port."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.recv(4096)  # the greeting
        client.sendall(
            (
                f"EHLO pipe-{n}.test\r\n"
                f"MAIL FROM:<sender-{n}@local.test>\r\n"
                "RCPT TO:<alice@local.test>\r\n"
                f"RCPT TO:<nobody-{n}@local.test>\r\n"
                "QUIT\r\n"
            ).encode()
        )
        received = b""
        while b"221 " not in received:
            chunk = client.recv(65536)
            if not chunk:
                break
            received += chunk
        return int(client.getsockname()[1])


def test_pipelined_steps_before_a_quit_are_all_recorded_with_noreply(
    tmp_path: Path, make_postfix: PostfixFactory
) -> None:
    """ "No reply" on a unix socket: every connect, HELO, MAIL and RCPT (accepted, and
    rejected by Postfix) of every session is an event."""
    shared = Path(tempfile.mkdtemp(prefix="smtp-policy-engine-"))
    shared.chmod(0o755)  # smtpd runs as postfix: it must reach the milter's socket
    config = tmp_path / "config.toml"
    config.write_text("")
    sock = f"{shared}/m.sock"
    milter = Daemon(
        "milter", tmp_path, "--config", str(config), "--listen", f"unix:{sock}",
        "--engine", "asyncio", "--noreply", "on",
    )  # fmt: skip
    try:
        with running(milter):
            pf = make_postfix(milters=f"{{ unix:{sock}, default_action=accept }}")
            ports = [pipelined_session(pf.smtp_port, n) for n in range(ROUNDS)]
            ours = milter.wait_for(
                lambda e: e["event"] == "session" and "mail" in e["commands"], WAIT, count=ROUNDS
            )
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    (started,) = milter.events.of("started")
    assert started["noreply"] is True and started["engine"] == "asyncio"
    stages = milter.events.of("stage")
    connects = {e["client_port"] for e in stages if e["stage"] == "connect"}
    assert set(ports) <= connects
    for stage, expected in (
        ("helo", {f"pipe-{n}.test" for n in range(ROUNDS)}),
        ("mail", {f"sender-{n}@local.test" for n in range(ROUNDS)}),
    ):
        field = "helo" if stage == "helo" else "sender"
        got = [e[field] for e in stages if e["stage"] == stage]
        assert sorted(got) == sorted(expected), stage
    accepted = [e["recipient"] for e in stages if e["stage"] == "rcpt"]
    assert accepted == ["alice@local.test"] * ROUNDS
    rejected = [e["recipient"] for e in milter.events.of("reply") if e["by"] == "mta"]
    assert sorted(rejected) == sorted(f"nobody-{n}@local.test" for n in range(ROUNDS))
    assert [s["commands"].get("abort") for s in ours] == [1] * ROUNDS, ours
    assert not milter.events.of("error")


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_share_the_socket_reload_and_stop_together(
    tmp_path: Path, make_postfix: PostfixFactory
) -> None:
    """--workers 2: every session recorded once, SIGHUP reloads each worker, SIGTERM stops
    both and removes the socket; SIGKILL of the first takes the other with it."""
    shared = Path(tempfile.mkdtemp(prefix="smtp-policy-engine-"))
    shared.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text("")
    sock = shared / "m.sock"
    milter = Daemon(
        "milter", tmp_path, "--config", str(config), "--listen", f"unix:{sock}",
        "--workers", "2",
    )  # fmt: skip
    try:
        with running(milter):
            (worker,) = _children(milter.pid)
            pf = make_postfix(milters=f"{{ unix:{sock}, default_action=accept }}")
            for n in range(ROUNDS):
                pipelined_session(pf.smtp_port, n)
            ours = milter.wait_for(
                lambda e: e["event"] == "session" and "mail" in e["commands"], WAIT, count=ROUNDS
            )
            milter.send_signal(signal.SIGHUP)
            milter.wait_for(lambda e: e["event"] == "reloaded", count=2)
        assert milter.returncode == 0
        assert not sock.exists()
        assert not Path(f"/proc/{worker}").exists()
        assert len({s["session"] for s in ours}) == ROUNDS
        assert len(milter.events.of("started")) == len(milter.events.of("stopped")) == 1
        assert not milter.events.of("error")

        killed = Daemon(
            "milter", tmp_path, "--config", str(config), "--listen", f"unix:{sock}",
            "--workers", "2", name="killed",
        )  # fmt: skip
        killed.start()
        try:
            (worker,) = _children(killed.pid)
        finally:
            killed.kill()
        poll(lambda: not Path(f"/proc/{worker}/stat").exists() or None, 10, lambda: "the worker")
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def mailed(event: dict[str, object]) -> bool:
    """A session event of a session that sent MAIL (not the lab's readiness probes)."""
    commands = event.get("commands")
    return isinstance(commands, dict) and "mail" in commands


@pytest.mark.parametrize("engine", ["asyncio", "libmilter"])
def test_session_mode_on_a_real_postfix(
    tmp_path: Path, make_postfix: PostfixFactory, engine: str
) -> None:
    """``[milter] events = "session"``: two transactions in one SMTP session, the first with a
    recipient Postfix rejects, are one ``session`` event with every outcome; SIGHUP to
    ``stages`` brings the per-stage events back for the next session."""
    shared = Path(tempfile.mkdtemp(prefix="smtp-policy-engine-"))
    shared.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text('[milter]\nevents = "session"\n')
    sock = f"{shared}/m.sock"
    milter = Daemon(
        "milter", tmp_path, "--config", str(config), "--listen", f"unix:{sock}",
        "--engine", engine,
    )  # fmt: skip
    message = b"Subject: session mode\r\n\r\nhello\r\n"
    try:
        with running(milter):
            pf = make_postfix(milters=f"{{ unix:{sock}, default_action=accept }}")
            with smtplib.SMTP("127.0.0.1", pf.smtp_port, timeout=30) as smtp:
                smtp.ehlo("session.test")
                refused = smtp.sendmail(
                    "first@local.test", ["alice@local.test", "nobody-s1@local.test"], message
                )
                assert list(refused) == ["nobody-s1@local.test"]
                smtp.sendmail("", ["alice@local.test"], message)
            (session,) = milter.wait_for(lambda e: e["event"] == "session" and mailed(e), WAIT)
            config.write_text('[milter]\nevents = "stages"\n')
            milter.send_signal(signal.SIGHUP)
            milter.wait_for(lambda e: e["event"] == "reloaded", WAIT)
            with smtplib.SMTP("127.0.0.1", pf.smtp_port, timeout=30) as smtp:
                smtp.sendmail("after@local.test", ["alice@local.test"], message)
            milter.wait_for(lambda e: e["event"] == "session" and mailed(e), WAIT, count=2)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    (started,) = milter.events.of("started")
    assert (started["engine"], started["events_mode"]) == (engine, "session")
    assert milter.events.of("reloaded")[0]["events_mode"] == "stages"
    stages = milter.events.of("stage")  # only the sessions after the reload
    (after,) = {e["session"] for e in stages if e["stage"] == "mail"}
    assert after != session["session"]
    assert not milter.events.of("reply") and not milter.events.of("error")
    assert session["helo"] == "session.test" and session["mta"] == "postfix"
    assert session["counts"].startswith("connect=1 helo=1 mail=2 rcpt=2/3 data=2 eom=2")
    assert (session["messages"], session["rejected_by_mta"]) == (2, 1)
    first, second = session["transactions"]
    assert (first["sender"], first["end"], second["sender"], second["end"]) == (
        "first@local.test",
        "eom",
        "",
        "eom",
    )
    assert first["queue_id"] and second["queue_id"] and first["queue_id"] != second["queue_id"]
    assert session["queue_ids"] == [first["queue_id"], second["queue_id"]]
    alice, nobody = first["recipients"]
    assert alice == {"stage": "rcpt", "outcome": "accepted", "recipient": "alice@local.test"}
    assert (nobody["recipient"], nobody["outcome"], nobody["by"]) == (
        "nobody-s1@local.test",
        "rejected",
        "mta",
    )
    assert (nobody["enhanced"], nobody["reason"]) == ("5.1.1", "user_unknown")
    assert [r["recipient"] for r in second["recipients"]] == ["alice@local.test"]
