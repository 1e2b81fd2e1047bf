"""Protocol-level tests with miltertest (OpenDKIM's Lua-scripted MTA side, ``man miltertest``).

Each test starts the milter as a real process and plays the MTA with a Lua script: option
negotiation, macros, connect/HELO/MAIL/RCPT/DATA/EOM, and the replies that come back.
No Postfix is involved, so these run wherever miltertest is installed.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_milter_postfix import MilterProcess

MILTERTEST = "/usr/bin/miltertest"

CONFIG = r"""
[[rules]]
name = "no-mallory"
stage = "rcpt"
recipient = ["mallory@*"]
action = "reject"
code = 550
enhanced = "5.7.1"
text = "Mallory does not get mail here (100% sure)"

[[rules]]
name = "busy"
stage = "mail"
sender = ["busy@*"]
action = "tempfail"
code = 451
enhanced = "4.3.2"
text = "Busy, try later"
"""

#: An end-of-message size rule: the milter then asks for headers and body to measure.
EOM_RULE = r"""
[[rules]]
name = "no-big-mail"
stage = "eom"
size_over = 100
action = "reject"
code = 552
enhanced = "5.3.4"
text = "Too big for us"
"""

#: What every script starts with: connect, negotiate, Postfix's connect macros, HELO.
PRELUDE = r"""
-- miltertest exits 1 on error() without saying why: say it first
function die(message) mt.echo("FAILED: " .. message) error(message) end
function fail(what, got, want)
  die(what .. ": got " .. tostring(got) .. ", want " .. tostring(want))
end
function ok(what, err) if err ~= nil then die(what .. ": " .. err) end end
function expect(what, want)
  local got = mt.getreply(conn)
  if got ~= want then fail(what, got, want) end
end
conn = mt.connect("inet:" .. port .. "@127.0.0.1", 40, 0.25)
if conn == nil then die("cannot connect to the milter") end
mt.macro(conn, SMFIC_CONNECT, "j", "mx.test", "v", "Postfix 3.7.11", "{daemon_addr}", "127.0.0.1")
ok("conninfo", mt.conninfo(conn, "client.example", "192.0.2.7"))
expect("connect", SMFIR_CONTINUE)
if not mt.test_option(conn, SMFIP_RCPT_REJ) then die("SMFIP_RCPT_REJ not negotiated") end
if not mt.test_option(conn, SMFIP_NOHDRS) then die("headers should be negotiated away") end
ok("helo", mt.helo(conn, "client.example"))
expect("helo", SMFIR_CONTINUE)
"""

pytestmark = pytest.mark.skipif(
    shutil.which(MILTERTEST) is None,
    reason="miltertest is not installed (apt-get install miltertest)",
)


@pytest.fixture(name="milter")
def _milter(tmp_path: Path) -> Iterator[MilterProcess]:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    proc = MilterProcess(tmp_path, "--config", str(config)).start()
    yield proc
    proc.stop()


def run_lua(milter: MilterProcess, body: str) -> str:
    """Run PRELUDE + ``body`` against the milter; fail with miltertest's output on error."""
    script = milter.workdir / "test.lua"
    script.write_text(PRELUDE + body + "\nmt.disconnect(conn)\n")
    done = subprocess.run(
        [MILTERTEST, "-D", f"port={milter.port}", "-s", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_an_ordinary_message_continues(milter: MilterProcess) -> None:
    """Every stage answers CONTINUE, nothing is changed, one session is recorded."""
    run_lua(
        milter,
        r"""
mt.macro(conn, SMFIC_MAIL, "i", "4AB1C2D3E", "{auth_authen}", "bob")
ok("mail", mt.mailfrom(conn, "<alice@example.com>", "SIZE=10"))
expect("mail", SMFIR_CONTINUE)
ok("rcpt", mt.rcptto(conn, "<bob@local.test>"))
expect("rcpt", SMFIR_CONTINUE)
ok("data", mt.data(conn))
expect("data", SMFIR_CONTINUE)
ok("eom", mt.eom(conn))
expect("eom", SMFIR_CONTINUE)
""",
    )
    (session,) = milter.wait_for(lambda e: e["event"] == "session")
    assert session["queue_ids"] == ["4AB1C2D3E"]
    assert session["messages"] == 1
    assert session["commands"] == {
        "connect": 1, "helo": 1, "mail": 1, "rcpt": 1, "data": 1, "eom": 1, "close": 1
    }  # fmt: skip
    assert not milter.events.of("error")


def test_policy_rejects_a_recipient_with_its_code(milter: MilterProcess) -> None:
    """A rcpt rule answers SMFIR_REPLYCODE; the other recipient still continues."""
    run_lua(
        milter,
        r"""
ok("mail", mt.mailfrom(conn, "<alice@example.com>"))
expect("mail", SMFIR_CONTINUE)
ok("rcpt", mt.rcptto(conn, "<mallory@local.test>"))
expect("rcpt mallory", SMFIR_REPLYCODE)
ok("rcpt", mt.rcptto(conn, "<bob@local.test>"))
expect("rcpt bob", SMFIR_CONTINUE)
""",
    )
    (reply,) = milter.wait_for(lambda e: e["event"] == "reply")
    assert (reply.get("rule"), reply.get("code"), reply.get("enhanced")) == (
        "no-mallory",
        550,
        "5.7.1",
    )
    assert reply.get("friendly") == "Mallory does not get mail here (100% sure)"


def test_policy_tempfails_a_sender(milter: MilterProcess) -> None:
    run_lua(
        milter,
        r"""
ok("mail", mt.mailfrom(conn, "<busy@example.com>"))
expect("mail", SMFIR_REPLYCODE)
""",
    )
    (reply,) = milter.wait_for(lambda e: e["event"] == "reply")
    assert (reply.get("code"), reply.get("enhanced"), reply.get("class")) == (
        451,
        "4.3.2",
        "transient",
    )


def test_policy_rejects_at_end_of_message_with_the_exact_reply(tmp_path: Path) -> None:
    """An eom size rule: headers and body are negotiated to measure; the reply is checked
    with miltertest's MT_SMTPREPLY (code, enhanced code, text)."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG + EOM_RULE)
    milter = MilterProcess(tmp_path, "--config", str(config)).start()
    try:
        script = PRELUDE.replace(
            'if not mt.test_option(conn, SMFIP_NOHDRS) then die("headers should be negotiated away") end',
            'if mt.test_option(conn, SMFIP_NOHDRS) then die("headers are needed to measure") end',
        )
        (tmp_path / "test.lua").write_text(
            script
            + r"""
ok("mail", mt.mailfrom(conn, "<alice@example.com>"))
expect("mail", SMFIR_CONTINUE)
ok("rcpt", mt.rcptto(conn, "<bob@local.test>"))
expect("rcpt", SMFIR_CONTINUE)
ok("header", mt.header(conn, "Subject", "a big one"))
if not mt.test_option(conn, SMFIP_NOEOH) then die("end of headers should be skipped") end
ok("body", mt.bodystring(conn, string.rep("x", 200) .. "\r\n"))
ok("eom", mt.eom(conn))
expect("eom", SMFIR_REPLYCODE)
if not mt.eom_check(conn, MT_SMTPREPLY, "552", "5.3.4", "Too big for us") then
  die("the eom reply is not 552 5.3.4 Too big for us")
end
mt.disconnect(conn)
"""
        )
        done = subprocess.run(
            [MILTERTEST, "-D", f"port={milter.port}", "-s", str(tmp_path / "test.lua")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        eom = milter.wait_for(lambda e: e.get("stage") == "eom" and e["event"] == "stage")[0]
        assert eom["size"] > 200
    finally:
        milter.stop()


def test_rejected_recipient_macros_are_explained(milter: MilterProcess) -> None:
    """SMFIP_RCPT_REJ as Postfix sends it: {rcpt_mailer}=error, code and text in macros."""
    run_lua(
        milter,
        r"""
ok("mail", mt.mailfrom(conn, "<alice@example.com>"))
expect("mail", SMFIR_CONTINUE)
mt.macro(conn, SMFIC_RCPT, "{rcpt_mailer}", "error", "{rcpt_host}", "5.1.1",
         "{rcpt_addr}", "Recipient address rejected: User unknown in local recipient table")
ok("rcpt", mt.rcptto(conn, "<nobody@local.test>"))
expect("rcpt", SMFIR_CONTINUE)
""",
    )
    (reply,) = milter.wait_for(lambda e: e["event"] == "reply")
    assert (reply["by"], reply.get("enhanced"), reply.get("reason")) == (
        "mta",
        "5.1.1",
        "user_unknown",
    )


def test_sighup_reloads_and_keeps_a_good_config_over_a_bad_one(milter: MilterProcess) -> None:
    """A broken config on SIGHUP: an error event, the old rules stay. A good one: replaced."""
    assert milter.proc is not None
    config = milter.workdir / "config.toml"
    mallory = r"""
ok("mail", mt.mailfrom(conn, "<alice@example.com>"))
expect("mail", SMFIR_CONTINUE)
ok("rcpt", mt.rcptto(conn, "<mallory@local.test>"))
expect("rcpt", %s)
"""
    config.write_text(CONFIG + '\n[[rules]]\nname = "broken"\nstage = "sometime"\n')
    milter.proc.send_signal(signal.SIGHUP)
    (error,) = milter.wait_for(lambda e: e["event"] == "error")
    assert error["text"].startswith("reload failed, keeping the running configuration:")
    assert "sometime" in error["text"]
    run_lua(milter, mallory % "SMFIR_REPLYCODE")
    config.write_text("")  # no rules at all
    milter.proc.send_signal(signal.SIGHUP)
    milter.wait_for(lambda e: e["event"] == "reloaded")
    run_lua(milter, mallory % "SMFIR_CONTINUE")
