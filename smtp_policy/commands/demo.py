"""Show what smtp_policy does, end to end.

Part 1 explains a handful of real-world replies (Gmail, Microsoft 365, Yahoo, Postfix, Exim,
Sendmail, a DNSBL, a greylisting daemon, shorthands people write) the way every adapter
explains them, then prints the JSON one of them becomes.

Part 2 (root and Postfix needed; ``bash scripts/demo`` installs both) builds a private Postfix
on loopback (:mod:`smtp_policy.lab`) with the milter, the maps server and a scripted remote
server, sends a few messages, shows the replies and the bounce as a client and a sender see
them, runs the log follower over the maillog, and prints the events of all three daemons.
Everything it starts is stopped again, also on Ctrl-C or an error. It says what it creates
before it starts, and it leaves /etc/postfix untouched: its Postfix has its own config dir and
is not registered in the system's ``alternate_config_directories`` (it needs no non-root
Postfix command).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from smtp_policy.core.explain import explain_text, render_explanation
from smtp_policy.data import default_knowledge
from smtp_policy.lab.instance import WaitTimeoutError, free_port
from smtp_policy.lab.postfix import POSTFIX, PostfixError, PrivatePostfix
from smtp_policy.lab.remote import ScriptedServer

HELP = "show smtp_policy explaining real-world replies"

SAMPLES = (
    "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
    "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
    "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp",
    "host mx.example.com[192.0.2.10] said: 452 4.2.2 The email account that you tried to reach "
    "is over quota. (in reply to RCPT TO command)",
    "554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org",
    "450 4.7.1 <bob@example.org>: Recipient address rejected: Greylisted, see "
    "http://postgrey.schweikert.ch/help/example.org.html",
    "connect to mx.example.net[203.0.113.5]:25: Connection timed out",
    "SMTP error from remote mail server after RCPT TO:<carol@example.com>: "
    "550 5.7.1 Relaying denied",
    "SMTP error 511",
)


def register(parser: argparse.ArgumentParser) -> None:
    """Options of the demo."""
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (config, event files, maillog)"
    )
    parser.add_argument(
        "--explain-only", action="store_true", help="only explain the sample replies (part 1)"
    )


def run(args: argparse.Namespace) -> int:
    """Explain the samples, then run the live demo."""
    heading("Part 1: explaining real-world replies")
    explain_samples()
    if getattr(args, "explain_only", False):
        return 0
    try:
        live_demo(keep=bool(getattr(args, "keep", False)))
    except DemoError as exc:
        print(f"smtp-policy demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("smtp-policy demo: interrupted; everything started was stopped", file=sys.stderr)
        return 1
    return 0


def heading(title: str) -> None:
    """A section heading."""
    print()
    print("=" * 78)
    print(title)
    print("=" * 78, flush=True)


def explain_samples() -> None:
    """Part 1: explain the sample replies."""
    kb = default_knowledge()
    for i, sample in enumerate(SAMPLES, start=1):
        print(f"--- reply {i} of {len(SAMPLES)}")
        print(render_explanation(explain_text(sample, kb)))
        print()
    print("--- the same first reply as JSON (smtp-policy explain --json):")
    print(json.dumps(explain_text(SAMPLES[0], kb).to_dict(), indent=2, ensure_ascii=False))


# --- Part 2: the live demo ----------------------------------------------------------------

DEMO_CONFIG = """
[texts]
help_url = "https://help.example.com/mail-errors#{reason}"

[[rules]]
name = "refuse-spam-example"
stage = "rcpt"
sender = ["*@spam.example"]
action = "reject"
code = 550
enhanced = "5.7.1"
reason = "blocked"
text = \"\"\"Sorry, we do not accept mail from {sender}.
If you believe this is a mistake, please write to postmaster@example.com
from another address.
More information: {help_url}\"\"\"
"""

SENDER = "sender@local.test"
EVENT_KINDS = ("reply", "lookup", "message")
COLUMNS = ("source", "event", "direction", "stage", "code", "enhanced", "reason", "summary")


class DemoError(Exception):
    """A failure the demo explains in one line."""


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise DemoError("not root: the live demo runs a private Postfix (sudo bash scripts/demo)")
    if not Path(POSTFIX).exists():
        raise DemoError("postfix is not installed: run bash scripts/install-deps")


class _Daemon:
    """``python -m smtp_policy COMMAND`` as a subprocess on a loopback port."""

    def __init__(self, command: str, listen: str, port: int, tmp: Path, config: Path) -> None:
        self.command = command
        self.port = port
        self.events = tmp / f"{command}-events.jsonl"
        self.stderr = tmp / f"{command}.stderr"
        self.argv = [sys.executable, "-m", "smtp_policy", command, "--listen", listen,
                     "--events", str(self.events), "--config", str(config)]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        with self.stderr.open("ab") as err:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                last = self.stderr.read_text(errors="replace").strip().splitlines()[-1:]
                raise DemoError(f"the {self.command} exited at start: {' '.join(last)}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise DemoError(f"the {self.command} did not start listening on port {self.port}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def _running(daemon: _Daemon) -> Iterator[_Daemon]:
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _show_reply(code: int, text: bytes | str) -> None:
    lines = (text.decode() if isinstance(text, bytes) else text).splitlines() or [""]
    for i, line in enumerate(lines):
        sep = "-" if i < len(lines) - 1 else " "
        print(f"  S: {code}{sep}{line}")


def _rcpt(port: int, sender: str, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=30) as smtp:
        smtp.ehlo()
        print(f"  C: MAIL FROM:<{sender}>")
        code, text = smtp.mail(sender)
        if code != 250:
            return code, text
        print(f"  C: RCPT TO:<{rcpt}>")
        return smtp.rcpt(rcpt)


def _send(port: int, sender: str, rcpt: str, subject: str) -> str:
    """Send one message; return Postfix's queue id."""
    body = (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{time.time_ns()}@local.test>\r\n\r\nHello from the demo.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=30) as smtp:
        smtp.ehlo()
        print(f"  C: MAIL FROM:<{sender}>")
        smtp.mail(sender)
        print(f"  C: RCPT TO:<{rcpt}>")
        code, text = smtp.rcpt(rcpt)
        _show_reply(code, text)
        if code != 250:
            raise DemoError(f"{rcpt} was refused: {code} {text.decode(errors='replace')}")
        print("  C: DATA ... .")
        code, text = smtp.data(body.encode())
        _show_reply(code, text)
    if code != 250 or b"queued as " not in text:
        raise DemoError(f"the message to {rcpt} was not accepted: {code}")
    return text.decode().rsplit("queued as ", 1)[1].split()[0]


def _show_bounce(bounce: EmailMessage) -> None:
    """The bounce as the sender reads it, and its machine-readable status."""
    print(f"\n  Subject: {bounce['Subject']}\n  --- text part ---")
    for line in _text_part(bounce).splitlines():
        print(f"  | {line}")
    print("  --- delivery status ---")
    for part in bounce.walk():
        if part.get_content_type() == "message/delivery-status":
            for block in part.get_payload():
                for key in ("Final-Recipient", "Action", "Status", "Diagnostic-Code"):
                    if isinstance(block, EmailMessage) and block[key]:
                        print(f"  {key}: {' '.join(str(block[key]).split())}")


def _text_part(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    return "" if part is None else str(part.get_content())


def _read_events(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def _cell(value: object, width: int) -> str:
    text = "" if value is None else " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "~"


def _event_table(files: dict[str, Path]) -> dict[str, int]:
    """Print one line per reply/lookup/message event; return counts per source."""
    widths = (6, 8, 10, 5, 4, 8, 16, 40)
    print("  " + " ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    counts: dict[str, int] = {}
    for name, path in files.items():
        for ev in _read_events(path):
            if ev.get("event") not in EVENT_KINDS:
                continue
            row = {c: ev.get(c) for c in COLUMNS}
            row["source"] = row["source"] or name
            counts[name] = counts.get(name, 0) + 1
            cells = (_cell(row[c], w).ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
            print("  " + " ".join(cells).rstrip())
    return counts


def live_demo(*, keep: bool) -> None:
    """Part 2: a private Postfix with the milter, the maps server and the follower."""
    _check_prerequisites()
    tmp = Path(tempfile.mkdtemp(prefix="smtp-policy-demo-"))
    try:
        with _sigterm_as_interrupt():
            _live_demo(tmp, keep=keep)
    except (PostfixError, WaitTimeoutError, OSError, smtplib.SMTPException) as exc:
        first = str(exc).strip().splitlines()[:1] or [type(exc).__name__]
        raise DemoError(f"{first[0]} (files in {tmp})" if keep else first[0]) from None
    finally:
        if keep:
            print(f"\nKept the demo files in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


WHAT_PART_2_CREATES = """\
What this part creates (/etc/postfix is not changed):
  {tmp}: the configuration and the daemons' event files
  /tmp/smtp-policy-postfix-*: a private Postfix (its own main.cf, queue, mailboxes, maillog)
  loopback listeners only: that Postfix, the milter, the maps server, a scripted remote server
Everything is stopped at the end{removed}.
"""


def _announce(tmp: Path, *, keep: bool) -> None:
    """Part 2's heading, and what it creates, before it creates anything more."""
    heading("Part 2: a private Postfix on loopback with the milter and the maps server")
    removed = ", and the temp dirs are kept (--keep)" if keep else " and both temp dirs removed"
    print(WHAT_PART_2_CREATES.format(tmp=tmp, removed=removed), flush=True)


def _live_demo(tmp: Path, *, keep: bool) -> None:
    _announce(tmp, keep=keep)
    config = tmp / "config.toml"
    config.write_text(DEMO_CONFIG)
    print(f"Configuration ({config}):{DEMO_CONFIG}")
    template = tmp / "bounce.cf"
    subprocess.run(
        [sys.executable, "-m", "smtp_policy", "postfix", "bounce-template",
         "--config", str(config), "-o", str(template)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    mport, sport = free_port(), free_port()
    milter = _Daemon("milter", f"inet:{mport}@127.0.0.1", mport, tmp, config)
    maps = _Daemon("maps", f"inet:127.0.0.1:{sport}", sport, tmp, config)
    table = f"socketmap:inet:127.0.0.1:{sport}"
    remote = ScriptedServer()
    with _running(milter), _running(maps), contextlib.ExitStack() as stack:
        remote.start()
        stack.callback(remote.stop)
        pf = PrivatePostfix(
            downstream_port=remote.port,
            milters=(
                f"{{ inet:127.0.0.1:{mport}, default_action=accept, connect_timeout=5s, "
                "command_timeout=10s, content_timeout=30s }"
            ),
            reject_footer_maps=f"{table}:footer",
            delivery_status_filter=f"{table}:dsn",
            main_cf={"bounce_template_file": str(template)},
            keep=keep,
            register=False,  # nothing here runs a Postfix command as non-root: /etc stays as is
        )
        pf.start()
        stack.callback(pf.stop)
        print(f"Postfix listens on 127.0.0.1:{pf.smtp_port}; the milter on port {mport}, the")
        print(f"maps server on port {sport}; mail for remote.test goes to a scripted server")
        print(f"on port {remote.port} that answers like Gmail.")

        heading("Message 1: accepted (sender@local.test -> alice@local.test)")
        _send(pf.smtp_port, SENDER, "alice@local.test", "Lunch on Friday?")
        pf.wait_for_mail("alice", timeout=30)
        print("  -> delivered to alice's mailbox")

        heading("Message 2: rejected by Postfix, unknown user (footer from the maps server)")
        _show_reply(*_rcpt(pf.smtp_port, SENDER, "nosuchuser@local.test"))

        heading("Message 3: rejected by the policy rule (sender *@spam.example, milter)")
        _show_reply(*_rcpt(pf.smtp_port, "eve@spam.example", "alice@local.test"))

        heading("Message 4: bounced by the remote server (nouser@remote.test, Gmail-style)")
        qid = _send(pf.smtp_port, SENDER, "nouser@remote.test", "The report you asked for")
        print(f"  waiting for the bounce of {qid} in sender@local.test's mailbox ...", flush=True)

        def is_bounce(msg: EmailMessage) -> bool:
            return qid in msg.as_string()

        (bounce,) = pf.wait_for_mail("sender", match=is_bounce, timeout=60)
        _show_bounce(bounce)

        heading("The log follower over Postfix's maillog")
        follow_events = tmp / "follow-events.jsonl"
        argv = [sys.executable, "-m", "smtp_policy", "follow", "--log", str(pf.maillog),
                "--from-start", "--once", "--events", str(follow_events),
                "--state", str(tmp / "state")]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            raise DemoError(f"the follower failed: {last[0]}")
        print(f"  read {pf.maillog}")

        heading("Events of all daemons (reply, lookup and message events)")
        if not keep:
            print("  (the event files are deleted at exit; run with --keep to keep them)")
        files = {"milter": milter.events, "maps": maps.events, "log": follow_events}
        counts = _event_table(files)
        print()
        for name, path in files.items():
            print(f"  {name:6} {counts.get(name, 0):3} events shown, all in {path}")
