"""follow, report and trace as an operator runs them: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smtp_policy.lab.instance import free_port, poll
from tests.helpers import SAMPLES, Daemon, read_events

SAMPLE = SAMPLES / "postfix-3.7-maillog-sample.log"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m smtp_policy ARGS``; never a traceback, whatever happens."""
    proc = subprocess.run(
        [sys.executable, "-m", "smtp_policy", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def removed_ids(text: str) -> set[str]:
    """Queue ids with a "removed" line."""
    return {line.split()[5].rstrip(":") for line in text.splitlines() if line.endswith("removed")}


def test_follow_once_replays_a_whole_file(tmp_path: Path) -> None:
    """--from-start --once: every reply, one record per removed message, a final stats event."""
    out = tmp_path / "events.jsonl"
    proc = cli("follow", "--log", str(SAMPLE), "--from-start", "--once", "--events", str(out))
    assert proc.returncode == 0, proc.stderr
    events = read_events(out)
    names = [e["event"] for e in events]
    assert names[0] == "started" and names[-1] == "stopped"
    records = [e for e in events if e["event"] == "message"]
    complete = [e.get("queue_id") for e in records if e["complete"]]
    assert len(complete) == len(set(complete))
    assert removed_ids(SAMPLE.read_text()) <= set(complete)
    stats = [e for e in events if e["event"] == "stats"][-1]
    assert stats["final"] is True
    assert stats["lines"] == len(SAMPLE.read_text().splitlines())
    assert all(e["schema"] == 1 and e["source"] == "log" for e in events)


def test_resume_with_state_gives_every_event_exactly_once(tmp_path: Path) -> None:
    """Half a file, stop, the rest appended, restart with --state: the same events as one run."""
    lines = SAMPLE.read_text().splitlines(keepends=True)
    log, state = tmp_path / "mail.log", tmp_path / "state"
    log.write_text("".join(lines[:1234]) + lines[1234][:40])  # ends mid-line
    out = tmp_path / "events.jsonl"
    args = ("follow", "--log", str(log), "--from-start", "--once", "--state", str(state))
    assert cli(*args, "--events", str(out)).returncode == 0
    with open(log, "a") as fh:
        fh.write(lines[1234][40:] + "".join(lines[1235:]))
    assert cli(*args, "--events", str(out)).returncode == 0
    whole = tmp_path / "whole.jsonl"
    cli("follow", "--log", str(log), "--from-start", "--once", "--events", str(whole))

    def key(e: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in e.items() if k != "ts"}, sort_keys=True)

    resumed = [key(e) for e in read_events(out) if e["event"] == "reply"]
    single = [key(e) for e in read_events(whole) if e["event"] == "reply"]
    assert resumed == single

    def records(path: Path) -> list[str]:
        return sorted(
            key(e) for e in read_events(path) if e["event"] == "message" and e["complete"]
        )

    assert records(out) == records(whole)
    assert len(records(out)) >= len(removed_ids(SAMPLE.read_text()))


def test_sigterm_saves_state_and_exits_zero(tmp_path: Path) -> None:
    """A following daemon stops cleanly on SIGTERM, with its position saved."""
    state = tmp_path / "state"
    follow = Daemon("follow", tmp_path, "--from-start", "--log", str(SAMPLE), "--state", str(state))
    out = follow.events.path
    try:
        follow.start()
        saved_state = state / "follow-state.json"
        poll(lambda: saved_state.exists() or None, 60, lambda: f"{saved_state}")
    finally:
        follow.stop(timeout=30)  # exit 0, no traceback
    saved = json.loads((state / "follow-state.json").read_text())
    assert saved["files"][str(SAMPLE)]["offset"] == SAMPLE.stat().st_size
    assert read_events(out)[-1]["event"] == "stopped"


def test_follow_reads_standard_input(tmp_path: Path) -> None:
    """- reads lines from standard input until it ends."""
    line = (
        "Nov 28 12:31:59 vm postfix/smtpd[19342]: NOQUEUE: reject: RCPT from unknown[127.0.0.1]: "
        "550 5.1.1 <x@localhost>: Recipient address rejected: User unknown in local recipient "
        "table; from=<s@sender.test> to=<x@localhost> proto=ESMTP helo=<client0.example.net>\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "smtp_policy", "follow", "-", "--once"],
        input=line,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(x) for x in proc.stdout.splitlines() if '"reply"' in x]
    assert replies[0].get("reason") == "user_unknown"
    assert replies[0].get("direction") == "upstream"


@pytest.mark.parametrize("command", ["follow", "report", "trace"])
def test_missing_file_is_one_line_not_a_traceback(tmp_path: Path, command: str) -> None:
    """A file that does not exist: a message naming it, a non-zero exit."""
    missing = str(tmp_path / "nope.log")
    args = {
        "follow": ("follow", "--log", missing, "--from-start", "--once", "--events", os.devnull),
        "report": ("report", missing),
        "trace": ("trace", "ABCDEF", missing),
    }[command]
    proc = cli(*args)
    assert proc.returncode != 0
    assert "nope.log" in proc.stderr


@pytest.mark.parametrize("command", ["follow", "report", "trace"])
def test_unreadable_file_is_one_line_not_a_traceback(tmp_path: Path, command: str) -> None:
    """A directory, or a file we may not read: a message, a non-zero exit."""
    target = tmp_path / "dir.log"
    target.mkdir()
    args = {
        "follow": ("follow", "--log", str(target), "--from-start", "--once"),
        "report": ("report", str(target)),
        "trace": ("trace", "ABCDEF", str(target)),
    }[command]
    proc = cli(*args)
    assert proc.returncode != 0
    assert "dir.log" in proc.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_permission(tmp_path: Path) -> None:
    """chmod 000: report says it cannot read the file."""
    target = tmp_path / "secret.log"
    target.write_text("x\n")
    target.chmod(0)
    proc = cli("report", str(target))
    assert proc.returncode == 2 and "secret.log" in proc.stderr


@pytest.mark.parametrize("command", ["follow", "report", "trace"])
def test_binary_garbage_is_not_fatal(tmp_path: Path, command: str) -> None:
    """Random bytes: counted as unknown lines, one UTF-8 warning, no traceback; report and
    trace warn that not one mail log line was found, and exit 1."""
    garbage = tmp_path / "garbage.log"
    garbage.write_bytes(os.urandom(200_000) + b"\n\x00\xff\n")
    out = tmp_path / "events.jsonl"
    args = {
        "follow": ("follow", "--log", str(garbage), "--from-start", "--once", "--events", str(out)),
        "report": ("report", str(garbage)),
        "trace": ("trace", "ABCDEF", str(garbage)),
    }[command]
    proc = cli(*args)
    assert proc.returncode == (0 if command == "follow" else 1), proc.stderr
    assert "Traceback" not in proc.stderr
    if command != "follow":
        assert "no Postfix or Sendmail log line" in proc.stderr
    if command == "follow":
        events = read_events(out)
        assert [e["kind"] for e in events if e["event"] == "warning"] == ["invalid_utf8"]
        assert events[-2]["event"] == "stats" and events[-2]["lines"] > 0


@pytest.mark.parametrize("form", ["", "--json", "--html"])
def test_report_cli(form: str) -> None:
    """report prints text, JSON or one HTML page."""
    proc = cli("report", *([form] if form else []), str(SAMPLE))
    assert proc.returncode == 0, proc.stderr
    if form == "--json":
        assert json.loads(proc.stdout)["totals"]["delivered"] > 0
    elif form == "--html":
        assert proc.stdout.startswith("<!DOCTYPE html>")
    else:
        assert "Downstream" in proc.stdout


@pytest.mark.parametrize("wanted", ["0895436B76", "<20261128123200.0895436B76@vm>"])
def test_trace_by_queue_id_or_message_id(wanted: str) -> None:
    """trace shows the bounced message, its attempt and its bounce notice's own record."""
    proc = cli("trace", wanted, str(SAMPLE))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Message 0895436B76" in out and "bounced" in out
    assert "552 5.2.2" in out and "mailbox_full" in out
    assert "Message 15AC736B7A" in out


def test_trace_json_and_unknown_id() -> None:
    """--json prints message records; an id not in the log exits 1 with a message."""
    proc = cli("trace", "--json", "0895436B76", str(SAMPLE))
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r.get("queue_id") for r in records] == ["0895436B76", "15AC736B7A"]
    proc = cli("trace", "FFFFFFFFFF", str(SAMPLE))
    assert proc.returncode == 1 and "FFFFFFFFFF" in proc.stderr


def test_metrics_are_served_while_following(tmp_path: Path) -> None:
    """--metrics-listen serves Prometheus text: replies by reason, one delay per message."""
    import urllib.request

    port = free_port()
    command = ["--from-start", "--log", str(SAMPLE), "--metrics-listen", f"127.0.0.1:{port}"]
    follow = Daemon("follow", tmp_path, *command)
    out = follow.events.path
    want = f'smtp_policy_log_lines_total{{kind="removed"}} {removed_count()}.0'

    def scrape() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text: str = r.read().decode()
        except OSError:
            return None
        return text if want in text else None

    try:
        follow.start()
        text = poll(scrape, 60, lambda: want)
        assert 'reason="user_unknown"' in text and 'enhanced="5.1.1"' in text
        assert "smtp_policy_log_messages_in_flight" in text
        complete = sum(1 for e in read_events(out) if e["event"] == "message" and e["complete"])
        assert f"smtp_policy_log_delivery_delay_seconds_count {complete}.0" in text
    finally:
        follow.stop(timeout=30)  # exit 0, no traceback


def removed_count() -> int:
    """How many "removed" lines the sample has."""
    return sum(1 for line in SAMPLE.read_text().splitlines() if line.endswith(": removed"))


def test_bad_metrics_address_is_one_line() -> None:
    """A --metrics-listen that is not ADDRESS:PORT is refused with a message, not a traceback."""
    proc = cli("follow", "-", "--once", "--metrics-listen", "nonsense")
    assert proc.returncode != 0 and "metrics-listen" in proc.stderr


# --- the configuration: [follow], [events], [metrics] ------------------------------------------


def follow_config(tmp_path: Path, port: int) -> Path:
    """A config file naming a copy of the sample log, a state dir, an events file and metrics."""
    log = tmp_path / "mail.log"
    log.write_bytes(SAMPLE.read_bytes())
    config = tmp_path / "config.toml"
    config.write_text(
        f'[follow]\nlogs = ["{log}"]\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[events]\noutput = "{tmp_path / "configured-events.jsonl"}"\n\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    return config


def scrape(port: int, want: str) -> str | None:
    """The metrics page on the loopback ``port`` once it holds ``want``, else None."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
    except OSError:
        return None
    return text if want in text else None


def test_follow_runs_from_its_configuration(tmp_path: Path) -> None:
    """--config alone: [follow] log and state_dir, [events] output and [metrics] listen used."""
    port = free_port()
    config = follow_config(tmp_path, port)
    out, state = tmp_path / "configured-events.jsonl", tmp_path / "state"
    err = tmp_path / "follow.stderr"
    want = f'smtp_policy_log_lines_total{{kind="removed"}} {removed_count()}.0'
    argv = [sys.executable, "-m", "smtp_policy", "follow", "--config", str(config), "--from-start"]
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
    try:
        text = poll(lambda: scrape(port, want), 60, lambda: f"{want}; {err.read_text()}")
        poll(lambda: (state / "follow-state.json").exists() or None, 60, lambda: str(state))
    finally:
        proc.terminate()
        stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.read_text()
    assert "Traceback" not in err.read_text()
    assert stdout == b""  # every event went where [events] output says
    assert 'reason="user_unknown"' in text
    events = read_events(out)
    started = events[0]
    assert started["event"] == "started"
    assert started["sources"] == [str(tmp_path / "mail.log")]
    assert started["metrics"] == f"inet:127.0.0.1:{port}"
    assert events[-1]["event"] == "stopped"
    saved = json.loads((state / "follow-state.json").read_text())
    assert saved["files"][str(tmp_path / "mail.log")]["offset"] == SAMPLE.stat().st_size


def test_follow_once_with_a_configuration_and_overriding_flags(tmp_path: Path) -> None:
    """--once with the configuration's sources; --events and --state override the file."""
    port = free_port()
    config = follow_config(tmp_path, port)
    out, state = tmp_path / "flag-events.jsonl", tmp_path / "flag-state"
    args = ("follow", "--config", str(config), "--once", "--from-start")
    proc = cli(*args, "--events", str(out), "--state", str(state))
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "configured-events.jsonl").exists()
    assert not (tmp_path / "state").exists()
    assert (state / "follow-state.json").exists()
    events = read_events(out)
    assert events[0]["metrics"] == f"inet:127.0.0.1:{port}"
    assert sum(1 for e in events if e["event"] == "reply") > 0
    proc = cli(*args, "--metrics-listen", "")  # '' turns the configured metrics off
    assert proc.returncode == 0, proc.stderr
    configured = read_events(tmp_path / "configured-events.jsonl")
    assert "metrics" not in configured[0]
    assert (tmp_path / "state" / "follow-state.json").exists()
    assert len([e for e in configured if e["event"] == "reply"]) == len(
        [e for e in events if e["event"] == "reply"]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[metrics]\nlisten = "nonsense"\n', ":2: metrics.listen: cannot parse 'nonsense'"),
        ('[follow]\nlogs = ["relative.log"]\n', ":2: follow.logs[0]: 'relative.log'"),
        ('[events]\noutput = "events.jsonl"\n', ":2: events.output: 'events.jsonl'"),
        ("[follow\n", ":1"),
    ],
)
def test_a_bad_configuration_is_one_line_and_exit_1(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A config that cannot be used: FILE:LINE: key: message, exit 1, nothing read."""
    config = tmp_path / "config.toml"
    config.write_text(text)
    proc = cli("follow", "--config", str(config), "--once", "-")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"smtp-policy follow: {config}{expected}"), lines[0]
    assert proc.stdout == ""


def test_metrics_address_in_use_is_one_line(tmp_path: Path) -> None:
    """[metrics] listen on a port already taken: one line naming it, exit 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(f'[metrics]\nlisten = "inet:127.0.0.1:{port}"\n')
        proc = cli("follow", "--config", str(config), "--once", "-", "--events", os.devnull)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"smtp-policy follow: metrics inet:127.0.0.1:{port}: cannot listen: Address already in use"
    ], proc.stderr
