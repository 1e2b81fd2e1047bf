"""Helpers shared by tests that start smtp_policy daemons as real processes: one daemon
wrapper, one event-file reader, and where the sample logs are."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Self

from smtp_policy.lab.instance import delivery_report, free_port, poll
from smtp_policy.lab.postfix import PrivatePostfix

#: The sample mail logs the tests read (see its README.md).
SAMPLES = Path(__file__).resolve().parent / "samples"

Event = dict[str, Any]

#: ``--listen`` on a loopback port, as each command spells it (the rest: ``inet:HOST:PORT``).
_LOOPBACK = {"milter": "inet:{port}@127.0.0.1", "proxy": "127.0.0.1:{port}"}


class EventFile:
    """A JSON Lines event file, read incrementally: each read parses only the lines added since
    the last one. A last line without its newline is still being written and waits; every other
    line must parse, except after a kill (``torn_lines``: a line cut by SIGKILL). A new file
    at the path (a rotation) is read from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.torn_lines = False
        self._events: list[Event] = []
        self._inode = 0
        self._offset = 0

    def read(self) -> list[Event]:
        """Every event written so far (none before the file exists)."""
        try:
            with self.path.open("rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if inode != self._inode:
                    self._inode, self._offset, self._events = inode, 0, []
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self._events
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            try:
                self._events.append(json.loads(line))
            except ValueError:
                if not self.torn_lines:
                    raise
        return self._events

    def of(self, kind: str) -> list[Event]:
        """The events with ``event == kind`` written so far."""
        return [e for e in self.read() if e["event"] == kind]


def read_events(path: Path) -> list[Event]:
    """Every event in the JSON Lines file ``path`` so far (none before it exists)."""
    return EventFile(path).read()


def is_stopped(pid: int) -> bool:
    """Whether the kernel shows ``pid`` stopped (state ``T`` in /proc/PID/stat)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def sigstop(pid: int, timeout: float = 30) -> None:
    """SIGSTOP ``pid`` and wait until the kernel shows it stopped."""
    os.kill(pid, signal.SIGSTOP)
    poll(lambda: is_stopped(pid) or None, timeout, lambda: f"process {pid} to stop")


class Daemon:
    """``python -m smtp_policy COMMAND ARGS --events FILE`` as a real process, stderr kept in a
    file: started (ready once it wrote its ``started`` event), paused, resumed, signalled,
    stopped or killed by the test, its events and memory read back.

    ``port``: listen on that loopback port (``--listen`` as the command spells it); ``name``
    tells apart the files of two daemons of one command in one ``workdir``; ``events``: the
    event file, ``WORKDIR/NAME-events.jsonl`` unless given; ``cwd``: the directory it runs in
    (a benchmark's source tree, whose ``smtp_policy`` it then imports), the caller's unless given.
    ``nofile``: its file-descriptor limit (RLIMIT_NOFILE, soft and hard), as a unit's
    ``LimitNOFILE=`` sets it; the caller's unless given.
    """

    def __init__(
        self,
        command: str,
        workdir: Path,
        *args: str,
        port: int | None = None,
        name: str | None = None,
        events: Path | None = None,
        cwd: Path | None = None,
        nofile: int | None = None,
    ) -> None:
        self.command = command
        self.cwd = cwd
        self.nofile = nofile
        self.workdir = workdir
        self.name = name or command
        self.port = port
        self.events = EventFile(events or workdir / f"{self.name}-events.jsonl")
        self.stderr_path = workdir / f"{self.name}.stderr"
        listen = []
        if port is not None:
            listen = ["--listen", _LOOPBACK.get(command, "inet:127.0.0.1:{port}").format(port=port)]
        self.argv = [sys.executable, "-m", "smtp_policy", command, *listen, *args,
                     "--events", str(self.events.path)]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def tcp_port(self) -> int:
        """The loopback port it listens on (the ``port`` it was given)."""
        assert self.port is not None, f"{self.name} was given no port"
        return self.port

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def _limit_files(self) -> None:
        """In the child, before exec: lower RLIMIT_NOFILE to ``nofile``."""
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self, timeout: float = 60) -> Self:
        """Start it and wait for its ``started`` event; fail with its stderr if it exits."""
        starts = len(self.events.of("started"))
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.cwd,
                # setrlimit is one system call, safe between fork and exec even with threads
                preexec_fn=None if self.nofile is None else self._limit_files,  # noqa: PLW1509
            )
        self.wait_for(lambda e: e["event"] == "started", timeout, count=starts + 1)
        return self

    def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = 30, *, count: int = 1
    ) -> list[Event]:
        """Poll until ``count`` events match ``predicate``; return all that do. Fails at once
        if the process exits."""

        def probe() -> list[Event] | None:
            found = [e for e in self.events.read() if predicate(e)]
            if len(found) >= count:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.stderr()}")
            return None

        return poll(probe, timeout, lambda: f"{count} {self.name} events; {self.stderr()}")

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` (SIGHUP: reload and reopen the event file)."""
        assert self.proc is not None, f"{self.name} is not running"
        self.proc.send_signal(sig)

    def pause(self) -> None:
        """SIGSTOP, and wait until the kernel shows the process stopped."""
        sigstop(self.pid)

    def resume(self) -> None:
        """SIGCONT."""
        self.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: down without a chance to clean up (it may leave a torn event line)."""
        assert self.proc is not None, f"{self.name} is not running"
        self.proc.kill()
        self.proc.wait(30)
        self.returncode = self.proc.returncode
        self.proc = None
        self.events.torn_lines = True

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (after a SIGCONT, should it be paused): it must exit 0 within ``timeout`` s
        without a traceback (SIGKILLed and failed if not)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        self.proc = None
        assert self.returncode == 0, (self.name, self.returncode, self.stderr())
        assert "Traceback" not in self.stderr(), self.stderr()

    def stderr(self) -> str:
        """Everything it wrote to stderr."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def memory(self) -> tuple[int, int] | None:
        """Its resident set (VmRSS, kB) and thread count now; None once it is gone."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in status.splitlines())
        return int(fields["VmRSS"].split()[0]), int(fields["Threads"])


@contextlib.contextmanager
def running(*daemons: Daemon) -> Iterator[None]:
    """Start the daemons in order; stop them all in reverse order at the end, whatever happens
    (the first failure to stop cleanly is raised once all are down)."""
    started: list[Daemon] = []
    try:
        for daemon in daemons:
            started.append(daemon)
            daemon.start()
        yield
    finally:
        failures: list[AssertionError] = []
        for daemon in reversed(started):
            try:
                daemon.stop()
            except AssertionError as failure:
                failures.append(failure)
        if failures:
            raise failures[0]


def configured_daemon(command: str, workdir: Path) -> Iterator[Daemon]:
    """For a module fixture: ``smtp-policy COMMAND`` reading ``WORKDIR/config.toml`` on a free
    loopback port, started, yielded, and stopped at the end (``yield from`` it)."""
    daemon = Daemon(command, workdir, "--config", str(workdir / "config.toml"), port=free_port())
    with running(daemon):
        yield daemon


def bounce_template(target: Path, config: Path | None = None) -> Path:
    """``target``, written by ``smtp-policy postfix bounce-template`` (reading ``config`` when
    given): the bounce(5) file a private Postfix's ``bounce_template_file`` names."""
    argv = [sys.executable, "-m", "smtp_policy", "postfix", "bounce-template", "-o", str(target)]
    if config is not None:
        argv += ["--config", str(config)]
    subprocess.run(argv, check=True, timeout=60)
    return target


def maps_table(maps: Daemon, name: str) -> str:
    """The maps server's ``name`` map (``footer`` or ``dsn``) as a Postfix socketmap table."""
    return f"socketmap:inet:127.0.0.1:{maps.tcp_port}:{name}"


def submit(port: int, sender: str, rcpt: str, filler: int = 0) -> str:
    """Send one message with ``filler`` bytes of body text; return its queue id."""
    body = f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: test\r\n\r\nhi\r\n" + (
        "x" * 70 + "\r\n"
    ) * (filler // 72)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as smtp:
        smtp.ehlo()
        smtp.mail(sender)
        assert smtp.rcpt(rcpt)[0] == 250
        code, reply = smtp.data(body.encode())
    assert code == 250, reply
    found = re.search(rb"queued as ([0-9A-F]+)", reply)
    assert found, reply
    return found.group(1).decode()


def notice_for(
    pf: PrivatePostfix, qid: str, action: str | None = None, mailbox: str = "sender"
) -> EmailMessage:
    """The notice in ``mailbox`` about ``qid`` (whose delivery report says ``action``, if given)."""

    def is_ours(msg: EmailMessage) -> bool:
        report = delivery_report(msg)
        return (
            report is not None
            and report.message.get("X-Postfix-Queue-ID") == qid
            and (action is None or any(r.get("Action") == action for r in report.recipients))
        )

    (notice,) = pf.wait_for_mail(mailbox, match=is_ours, timeout=30)
    return notice


def text_part(msg: EmailMessage) -> str:
    """The message's text/plain body."""
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())
