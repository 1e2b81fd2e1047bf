"""Nothing smtp_policy writes can be forged or follow a link (issue 16, items 2 and 11).

Event and state files are opened without following a symbolic link and only when they are
regular files of the writer's own user; every event string has a size cap; JSON is valid UTF-8
with one line per event; terminal output shows control characters escaped.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from smtp_policy.adapters.follow.state import StateStore, load_state
from smtp_policy.commands import trace
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.events import (
    CUT_MARKER,
    DETAIL_CAP,
    NAME_CAP,
    TEXT_CAP,
    Event,
    EventKind,
    MessageReply,
    MessageSummary,
    RecipientSummary,
    Source,
    capped,
)
from smtp_policy.core.explain import explain_text, render_explanation
from smtp_policy.core.sanitize import json_text, printable, without_surrogates
from smtp_policy.data import default_knowledge
from smtp_policy.emit import EVENTS_MODE, EventWriter, UnsafeFileError, open_own_file
from smtp_policy.maillog.report import ReportBuilder, render_text
from tests.helpers import read_events

NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another uid")
#: Characters a line-based reader or a terminal must never receive raw.
HOSTILE = "a\x1b[2J\x85b\u2028c\u2029d\x9b31me\x7f\x00\r\n"


def _event(text: str = "x", **fields: object) -> Event:
    return Event(event=EventKind.LOOKUP, source=Source.MAPS, ts=datetime.now(UTC), text=text,
                 **fields)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture
def root_owned(tmp_path: Path) -> Iterator[Path]:
    """A file the attacker wants the daemon to write to (a root-owned script)."""
    target = tmp_path / "root-script.sh"
    target.write_text("#!/bin/sh\necho safe\n")
    yield target
    assert target.read_text() == "#!/bin/sh\necho safe\n", "the link was followed"


# -- event files ---------------------------------------------------------------------------------


def test_a_symlinked_events_file_is_refused_at_open(tmp_path: Path, root_owned: Path) -> None:
    """A link at the events path, to a file of the daemon's user, is refused: not followed."""
    path = tmp_path / "events.jsonl"
    path.symlink_to(root_owned)
    with pytest.raises(UnsafeFileError) as caught:
        EventWriter.open(str(path))
    assert caught.value.strerror is not None and "symbolic link" in caught.value.strerror


def test_a_dangling_symlink_creates_nothing(tmp_path: Path) -> None:
    """A link to a file that does not exist yet is refused too: its target is never created."""
    target = tmp_path / "etc-cron.d-evil"
    path = tmp_path / "events.jsonl"
    path.symlink_to(target)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        EventWriter.open(str(path))
    assert not target.exists()


@ROOT_ONLY
def test_the_attack_a_user_owned_directory_and_a_link_to_a_root_file(
    tmp_path: Path, root_owned: Path
) -> None:
    """The review's attack: a local user owns the events directory and swaps the file for a
    link to a root-owned script; the daemon (root) refuses it at start and at reopen."""
    folder = tmp_path / "events"
    folder.mkdir()
    os.chown(folder, NOBODY, NOBODY)
    path = folder / "events.jsonl"
    writer = EventWriter.open(str(path))
    writer.emit(_event("before"))
    kept = folder / "moved-away"
    path.rename(kept)  # as the user who owns the directory
    path.symlink_to(root_owned)
    os.lchown(path, NOBODY, NOBODY)
    writer.reopen(Source.MAPS)
    writer.emit(_event("$(id>/tmp/pwned)"))
    writer.close()
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        EventWriter.open(str(path))
    texts = [e["text"] for e in read_events(kept)]
    assert texts[0] == "before" and "symbolic link" in texts[1] and texts[2] == "$(id>/tmp/pwned)"


def test_reopen_refuses_a_swapped_in_link_and_keeps_the_old_file(
    tmp_path: Path, root_owned: Path
) -> None:
    """SIGHUP after the file was replaced by a link: keep writing the open file, say why."""
    path = tmp_path / "events.jsonl"
    writer = EventWriter.open(str(path))
    writer.emit(_event("1"))
    kept = tmp_path / "events.jsonl.1"
    path.rename(kept)
    path.symlink_to(root_owned)
    writer.reopen(Source.MAPS)
    writer.emit(_event("2"))
    writer.close()
    events = read_events(kept)
    assert [e["event"] for e in events] == ["lookup", "error", "lookup"]
    assert "cannot reopen" in events[1]["text"] and "symbolic link" in events[1]["text"]
    assert path.is_symlink()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_a_new_events_file_is_0640_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Created by hand under any umask, the file is readable by the group, by no one else."""
    path = tmp_path / "events.jsonl"
    old = os.umask(umask)
    try:
        EventWriter.open(str(path)).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == EVENTS_MODE == 0o640


def test_an_existing_file_keeps_its_mode_and_is_appended_to(tmp_path: Path) -> None:
    """The admin's own file (its mode chosen by them) is appended to, not truncated."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"old": 1}\n')
    path.chmod(0o600)
    writer = EventWriter.open(str(path))
    writer.emit(_event("new"))
    writer.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [e.get("text") for e in read_events(path)] == [None, "new"]


def test_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO (no reader: opening must not hang) or a directory is not an events file."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        EventWriter.open(str(fifo))
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(UnsafeFileError, match="not a regular file"):
            EventWriter.open(str(fifo))
    finally:
        os.close(reader)
    with pytest.raises(IsADirectoryError):
        EventWriter.open(str(tmp_path))


def test_a_hard_link_is_refused(tmp_path: Path) -> None:
    """A second name for a file may be another file of the daemon's user: refused."""
    other = tmp_path / "other"
    other.write_text("")
    path = tmp_path / "events.jsonl"
    os.link(other, path)
    with pytest.raises(UnsafeFileError, match="hard links"):
        EventWriter.open(str(path))


@ROOT_ONLY
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    """A file the daemon's user does not own is refused (the other user could rewrite it)."""
    path = tmp_path / "events.jsonl"
    path.write_text("")
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafeFileError, match=f"owned by uid {NOBODY}"):
        EventWriter.open(str(path))


def test_dev_null_stays_a_sink(tmp_path: Path) -> None:
    """``--events /dev/null`` (benchmarks) writes nothing anywhere, as before."""
    writer = EventWriter.open(os.devnull)
    writer.emit(_event())
    writer.close()


def test_open_own_file_sets_close_on_exec(tmp_path: Path) -> None:
    """A daemon's files do not leak into the processes it starts (journalctl)."""
    fd = open_own_file(str(tmp_path / "f"), os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


# -- state files ---------------------------------------------------------------------------------


def test_state_is_saved_0600_and_a_link_at_its_path_is_replaced(
    tmp_path: Path, root_owned: Path
) -> None:
    """Saving renames a fresh 0600 file over the path: a link there is replaced, not followed."""
    store = StateStore(tmp_path / "state")
    old = os.umask(0)
    try:
        store.save({"version": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    store.path.unlink()
    store.path.symlink_to(root_owned)
    store.save({"version": 1})
    assert not store.path.is_symlink()
    assert json.loads(store.path.read_text()) == {"version": 1}


def test_a_symlinked_state_file_refuses_the_start(tmp_path: Path, root_owned: Path) -> None:
    """Reading the state through a link is refused: one line (exit 1), nothing read or moved."""
    store = StateStore(tmp_path)
    store.path.symlink_to(root_owned)
    with pytest.raises(ConfigError, match=r"state file .* symbolic link"):
        load_state(store)
    assert store.path.is_symlink()


@ROOT_ONLY
def test_a_state_file_of_another_user_refuses_the_start(tmp_path: Path) -> None:
    """A state file another user owns could have been forged: refused."""
    store = StateStore(tmp_path)
    store.save({"version": 1})
    os.chown(store.path, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"owned by uid {NOBODY}"):
        load_state(store)


def test_an_own_state_file_is_read_back(tmp_path: Path) -> None:
    """The follower's own state loads as before."""
    store = StateStore(tmp_path)
    store.save({"version": 1, "files": {}})
    assert load_state(store) == {"version": 1, "files": {}}


# -- caps -----------------------------------------------------------------------------------------


def test_long_fields_are_cut_with_a_marker() -> None:
    """A long HELO, address or key is cut to its cap, ending with the marker."""
    event = _event(
        "k" * 100_000, helo="h" * 5000, sender="<" + "s" * 5000 + ">", summary="y" * 9000
    )
    data = {k: v for k, v in event.to_dict().items() if isinstance(v, str)}
    assert len(data["text"]) == TEXT_CAP and data["text"].endswith(CUT_MARKER)
    assert len(data["helo"]) == NAME_CAP and data["helo"].endswith(CUT_MARKER)
    assert len(data["sender"]) == NAME_CAP
    assert len(data["summary"]) == DETAIL_CAP
    assert _event("short").to_dict()["text"] == "short"


def test_extras_and_message_records_are_capped_at_any_depth() -> None:
    """Strings inside the extras (object keys too) and a message record have caps as well."""
    event = _event(extra={"macros": {"k" * 1000: "v" * 10_000}, "params": ["p" * 10_000]})
    data = event.to_dict()
    ((key, value),) = data["macros"].items()  # type: ignore[attr-defined]
    assert len(key) == NAME_CAP and len(value) == DETAIL_CAP
    assert len(data["params"][0]) == DETAIL_CAP  # type: ignore[index]
    record = MessageSummary(
        status="bounced", complete=True, received="2026-01-01T00:00:00Z", delay=1.0,
        recipients=(RecipientSummary("<" + "r" * 9000 + ">", attempts=(
            MessageReply(ts="2026-01-01T00:00:00Z", text="t" * 9000),)),),
    )  # fmt: skip
    message = Event(event=EventKind.MESSAGE, source=Source.LOG, ts=datetime.now(UTC),
                    message=record).to_dict()  # fmt: skip
    rcpt = message["recipients"][0]  # type: ignore[index]
    assert len(rcpt.get("recipient")) == DETAIL_CAP
    assert len(rcpt["attempts"][0]["text"]) == DETAIL_CAP


def test_capped_spells_undecodable_bytes_as_the_helo_doc_says() -> None:
    """Bytes kept by surrogateescape are written ``\\xNN``; other lone surrogates as U+FFFD."""
    assert capped("ab\udcff\ud800", 100) == "ab\\xff\ufffd"
    assert without_surrogates("plain") == "plain"


# -- JSON ------------------------------------------------------------------------------------------


def test_events_escape_line_breaks_and_controls() -> None:
    """U+2028, U+2029, U+0085 and the C0/C1 controls are escaped: one line per event."""
    out = io.StringIO()
    EventWriter(out).emit(_event(HOSTILE, helo="\udcff\u2028"))
    line = out.getvalue()
    assert len(line.splitlines()) == 1 and line.endswith("}\n")
    for char in "\x1b\x85\u2028\u2029\x9b\x7f\x00\r":
        assert char not in line
    assert "\\u2028" in line and "\\u0085" in line and "\\u001b" in line
    line.encode("utf-8")  # strict: no lone surrogate left
    data = json.loads(line)
    assert data.get("text") == HOSTILE and data.get("helo") == "\\xff\u2028"


def test_json_text_keeps_readable_text_readable() -> None:
    """Letters stay themselves (ensure_ascii=False); only what breaks lines is escaped."""
    assert json_text({"t": "Grüße €"}) == '{"t": "Grüße €"}'
    assert json_text("\x7f") == '"\\u007f"'
    assert json.loads(json_text({"\u2028": "\udc80"})) == {"\u2028": "\\x80"}


# -- terminal ------------------------------------------------------------------------------------


def test_printable_escapes_what_would_drive_a_terminal() -> None:
    """ESC, CSI, line separators, bidi overrides and bytes show as escapes."""
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("x\u2028y\u0085z\u202e") == "x\\u2028y\\x85z\\u202e"
    assert printable("t\tn\nr\r") == "t\\tn\\nr\\r"
    assert printable("\udcff\ud800") == "\\xff\\ud800"
    assert printable("Grüße 550 <a@b>") == "Grüße 550 <a@b>"


def test_explain_shows_controls_escaped() -> None:
    """The text answer of explain shows the reply's ESC as ``\\x1b``, with or without colour."""
    explanation = explain_text("550 5.1.1 <a\x1b]0;owned\x07@b>: User unknown", default_knowledge())
    for colour in (False, True):
        block = render_explanation(explanation, colour=colour)
        assert "\\x1b]0;owned\\x07" in block and "\x07" not in block
        assert "\x1b]" not in block


def test_trace_shows_log_text_escaped() -> None:
    """trace prints what the log said with its controls escaped, one line per line."""
    reply = MessageReply(ts="2026-01-01T00:00:01+00:00", status="bounced", attempt=1,
                         text="550 \x1b[31mred\u2028fake line", relay="mx\x85x")  # fmt: skip
    record = MessageSummary(
        status="bounced", complete=True, received="2026-01-01T00:00:00+00:00", delay=1.0,
        recipients=(RecipientSummary("<r@b>", attempts=(reply,)),),
    )  # fmt: skip
    event = Event(event=EventKind.MESSAGE, source=Source.LOG, ts=datetime.now(UTC),
                  queue_id="Q1", sender="<s\x1b[2J@a>", client_addr="192.0.2.1",
                  helo="h\nforged", message=record)  # fmt: skip
    text = trace.render(event)
    assert "\x1b" not in text and "\u2028" not in text and "\x85" not in text
    assert "\\x1b[31mred\\u2028fake line" in text and "<s\\x1b[2J@a>" in text
    assert "h\\nforged" in text


def test_report_text_shows_examples_escaped() -> None:
    """report's text form escapes the example replies and domains it prints."""
    event = Event(event=EventKind.REPLY, source=Source.LOG, ts=datetime.now(UTC),
                  klass="transient", reason="greylisted", text="451 \x1b[2Jwait\u2028x",
                  recipient="<a@d\x1b.test>", extra={"status": "deferred"})  # fmt: skip
    text = render_text(ReportBuilder().add_all([event]).result())
    assert "\x1b" not in text and "\u2028" not in text
    assert "451 \\x1b[2Jwait\\u2028x" in text and "d\\x1b.test" in text
