"""The log tailer: rotation, truncation, partial lines, bad bytes and exact resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smtp_policy.adapters.follow.journal import JournalTail, journal_command, journal_line
from smtp_policy.adapters.follow.state import StateStore
from smtp_policy.adapters.follow.tail import (
    MAX_LINE_BYTES,
    FilePosition,
    FileTail,
    StreamTail,
    Tailer,
)


@pytest.fixture(name="tails")
def _tails() -> Iterator[list[FileTail]]:
    """Every FileTail a test opens is closed afterwards (ResourceWarnings are errors)."""
    opened: list[FileTail] = []
    yield opened
    for tail in opened:
        tail.close()


def drain(tail: FileTail, limit: int = 10_000) -> tuple[list[str], list[str]]:
    """Poll until the tail reports its end; the lines and the notice kinds."""
    lines: list[str] = []
    kinds: list[str] = []
    for _ in range(limit):
        batch = tail.poll()
        lines += batch.lines
        kinds += [n.kind for n in batch.notices]
        if tail.exhausted:
            return lines, kinds
    raise AssertionError("the tail never reached its end")


def keep(tails: list[FileTail], tail: FileTail) -> FileTail:
    """Remember ``tail`` for closing at teardown."""
    tails.append(tail)
    return tail


def write(path: Path, text: str | bytes, mode: str = "a") -> None:
    """Append (or write) raw text or bytes."""
    data = text.encode() if isinstance(text, str) else text
    with open(path, mode + "b") as fh:
        fh.write(data)


def numbered(start: int, stop: int) -> str:
    """Log-like lines ``start`` … ``stop - 1``, each with its newline."""
    return "".join(f"Nov 28 12:00:00 vm postfix/smtpd[1]: line {i}\n" for i in range(start, stop))


def test_partial_last_line_is_held_back_until_complete(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """A line without its newline is not handed out; once finished, it comes out whole."""
    log = tmp_path / "mail.log"
    write(log, "first\nsec")
    tail = keep(tails, FileTail(log, from_start=True))
    assert drain(tail)[0] == ["first"]
    assert tail.position is not None and tail.position.offset == len("first\n")
    write(log, "ond\nthird")
    assert drain(tail)[0] == ["second"]
    write(log, "\n")
    assert drain(tail)[0] == ["third"]
    assert tail.finish().lines == []


def test_finish_hands_out_the_partial_line(tmp_path: Path, tails: list[FileTail]) -> None:
    """When the input is over (a replay), the unfinished last line becomes a line."""
    log = tmp_path / "mail.log"
    write(log, "a\nb")
    tail = keep(tails, FileTail(log, from_start=True))
    assert drain(tail)[0] == ["a"]
    assert tail.finish().lines == ["b"]


def test_default_start_is_the_end_of_the_last_complete_line(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """Without --from-start, old lines are skipped, but a line being written is read whole."""
    log = tmp_path / "mail.log"
    write(log, "old 1\nold 2\nnew beg")
    tail = keep(tails, FileTail(log))
    assert drain(tail)[0] == []
    write(log, "ins\nnew 2\n")
    assert drain(tail)[0] == ["new begins", "new 2"]


def test_rename_rotation_finishes_the_old_file_first(tmp_path: Path, tails: list[FileTail]) -> None:
    """mv mail.log mail.log.1 + a new mail.log: the old file's rest, then the new file."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 5))
    tail = keep(tails, FileTail(log, from_start=True))
    assert len(drain(tail)[0]) == 5
    write(log, numbered(5, 8) + "partial")  # written after our last read, before rotation
    log.rename(tmp_path / "mail.log.1")
    write(log, numbered(8, 10), "w")
    lines, kinds = drain(tail)
    expected = [*numbered(5, 8).splitlines(), "partial", *numbered(8, 10).splitlines()]
    assert lines == expected
    assert kinds == ["rotated"]
    pos = tail.position
    assert pos is not None and pos.ino == os.stat(log).st_ino and pos.offset == log.stat().st_size


def test_rotation_without_a_new_file_yet_keeps_the_old_one(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """Between the rename and the create, the follower waits; nothing is lost or repeated."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 2))
    tail = keep(tails, FileTail(log, from_start=True))
    drain(tail)
    log.rename(tmp_path / "mail.log.1")
    write(tmp_path / "mail.log.1", numbered(2, 3))
    assert drain(tail)[0] == numbered(2, 3).splitlines()
    write(log, numbered(3, 4), "w")
    assert drain(tail)[0] == numbered(3, 4).splitlines()


def test_copytruncate_starts_again_at_zero(tmp_path: Path, tails: list[FileTail]) -> None:
    """cp mail.log mail.log.1 && : > mail.log: the shorter file is read from its start."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 10))
    tail = keep(tails, FileTail(log, from_start=True))
    drain(tail)
    ino = log.stat().st_ino
    os.truncate(log, 0)
    write(log, "after truncate\n")
    assert log.stat().st_ino == ino
    lines, kinds = drain(tail)
    assert lines == ["after truncate"]
    assert kinds == ["truncated"]


def test_copytruncate_refilled_past_the_offset_is_seen_by_the_first_line(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """Truncated and grown past our offset before we looked: the first line's hash tells."""
    log = tmp_path / "mail.log"
    write(log, "short\n")
    tail = keep(tails, FileTail(log, from_start=True))
    drain(tail)
    os.truncate(log, 0)
    write(log, numbered(0, 3))
    lines, kinds = drain(tail)
    assert lines == numbered(0, 3).splitlines()
    assert kinds == ["truncated"]


def test_copytruncate_while_behind_reads_the_rest_from_the_copy(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """Lines written before the copy but not read yet are read from the copy, once each.

    The bug this guards: the truncation was noticed and reading restarted at offset 0 of the
    truncated file, so every line between our offset and the copy was lost.
    """
    log = tmp_path / "mail.log"
    write(tmp_path / "mail.log.2", numbered(900, 990))  # an older rotation: another first line
    write(log, numbered(0, 10))
    tail = keep(tails, FileTail(log, from_start=True))
    assert drain(tail)[0] == numbered(0, 10).splitlines()
    write(log, numbered(10, 20))  # not read yet
    shutil.copyfile(log, tmp_path / "mail.log.1")
    os.truncate(log, 0)
    write(log, numbered(20, 25))
    lines, kinds = drain(tail)
    assert lines == numbered(10, 25).splitlines()
    assert kinds[0] == "truncated"
    write(log, numbered(25, 27))
    assert drain(tail)[0] == numbered(25, 27).splitlines()


def test_copytruncate_while_stopped_resumes_from_the_copy(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """Stopped, lines added, copied and truncated: the copy's rest, then the truncated file."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 10))
    first = keep(tails, FileTail(log, from_start=True))
    seen = drain(first)[0]
    position = first.position
    first.close()
    write(log, numbered(10, 20))
    shutil.copyfile(log, tmp_path / "mail.log.1")
    os.truncate(log, 0)
    write(log, numbered(20, 25))
    second = keep(tails, FileTail(log, position=position))
    lines, kinds = drain(second)
    assert seen + lines == numbered(0, 25).splitlines()
    assert kinds[0] == "truncated"
    # Stopped again while reading the copy: the saved position names the copy, found by inode.
    write(log, numbered(25, 30))
    third = keep(tails, FileTail(log, position=second.position))
    assert drain(third)[0] == numbered(25, 30).splitlines()


def test_a_copy_shorter_than_the_offset_is_not_taken_for_ours(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """A sibling with our first line but fewer bytes than we read is not the copy."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 10))
    tail = keep(tails, FileTail(log, from_start=True))
    drain(tail)
    write(tmp_path / "mail.log.1", numbered(0, 5), "w")
    os.truncate(log, 0)
    write(log, numbered(50, 52))
    assert drain(tail) == (numbered(50, 52).splitlines(), ["truncated"])


def test_truncation_while_busy_is_seen_before_the_next_chunk(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """Truncated and refilled while we are mid-file: no line is read from the middle."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 50))
    tail = keep(tails, FileTail(log, from_start=True, chunk_bytes=200))
    tail.poll()
    os.truncate(log, 0)
    write(log, numbered(100, 200))
    batch = tail.poll()
    assert [n.kind for n in batch.notices] == ["truncated"]
    assert batch.lines[0] == numbered(100, 101).rstrip("\n")


def test_invalid_utf8_is_replaced_and_reported_once_per_file(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """Bad bytes become U+FFFD; one notice per file however many bad lines there are."""
    log = tmp_path / "mail.log"
    write(log, b"ok\nbad \xff\xfe here\nalso \xc3\n")
    tail = keep(tails, FileTail(log, from_start=True))
    lines, kinds = drain(tail)
    assert lines == ["ok", "bad \ufffd\ufffd here", "also \ufffd"]
    assert kinds == ["invalid_utf8"]
    write(log, b"more \x80\n")
    assert drain(tail) == (["more \ufffd"], [])


def test_an_endless_line_is_cut(tmp_path: Path, tails: list[FileTail]) -> None:
    """Binary garbage without newlines cannot grow the buffer beyond MAX_LINE_BYTES."""
    log = tmp_path / "mail.log"
    write(log, b"x" * (MAX_LINE_BYTES * 2 + 10))
    tail = keep(tails, FileTail(log, from_start=True))
    lines, kinds = drain(tail)
    assert [len(x) for x in lines] == [MAX_LINE_BYTES, MAX_LINE_BYTES]
    assert kinds == ["cut", "cut"]
    assert tail.finish().lines == ["x" * 10]


def test_missing_then_created_file_is_read_from_its_start(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """A file that does not exist yet is reported once and read whole when it appears."""
    log = tmp_path / "mail.log"
    tail = keep(tails, FileTail(log))
    assert drain(tail) == ([], ["missing"])
    assert drain(tail) == ([], [])
    write(log, "hello\n")
    assert drain(tail)[0] == ["hello"]


def test_a_directory_is_unreadable_not_fatal(tmp_path: Path, tails: list[FileTail]) -> None:
    """Following something that is not a regular file yields a notice, never an exception."""
    tail = keep(tails, FileTail(tmp_path, from_start=True))
    assert drain(tail) == ([], ["unreadable"])


def test_resume_mid_file_gives_every_line_exactly_once(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """Run, stop mid-file, append, restart from the saved position: the raw file, once."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 300))
    first = keep(tails, FileTail(log, from_start=True, chunk_bytes=997))
    seen: list[str] = []
    for _ in range(5):
        seen += first.poll().lines
    assert 0 < len(seen) < 300
    state = StateStore(tmp_path / "state")
    assert first.position is not None
    state.save({"pos": first.position.to_dict()})
    first.close()
    write(log, numbered(300, 400) + "unfinished")
    loaded = state.load()
    assert loaded is not None
    second = keep(
        tails, FileTail(log, position=FilePosition.from_dict(loaded["pos"]), chunk_bytes=997)
    )
    seen += drain(second)[0]
    write(log, " at last\n")
    seen += drain(second)[0]
    assert seen == log.read_text().splitlines()


def test_resume_after_a_rotation_while_stopped_finishes_the_rotated_file(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """Stopped, then lines were added and the file rotated: mail.log.1's rest comes first."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 10))
    first = keep(tails, FileTail(log, from_start=True))
    seen = drain(first)[0]
    position = first.position
    first.close()
    write(log, numbered(10, 12))
    log.rename(tmp_path / "mail.log.1")
    write(log, numbered(12, 15), "w")
    second = keep(tails, FileTail(log, position=position))
    seen += drain(second)[0]
    assert seen == numbered(0, 15).splitlines()


def test_resume_on_a_replaced_file_starts_at_zero(tmp_path: Path, tails: list[FileTail]) -> None:
    """A saved position whose file is gone and not found among siblings: read the new one."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 10))
    first = keep(tails, FileTail(log, from_start=True))
    drain(first)
    position = first.position
    first.close()
    log.unlink()
    write(log, numbered(20, 22), "w")
    assert drain(keep(tails, FileTail(log, position=position)))[0] == numbered(20, 22).splitlines()


def test_resume_on_a_file_truncated_while_stopped_starts_at_zero(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """Same inode, but shorter than the saved offset or with another first line."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 10))
    first = keep(tails, FileTail(log, from_start=True))
    drain(first)
    position = first.position
    first.close()
    os.truncate(log, 0)
    write(log, numbered(50, 70))
    lines, kinds = drain(keep(tails, FileTail(log, position=position)))
    assert lines == numbered(50, 70).splitlines()
    assert kinds == ["truncated"]


def test_tailer_sleeps_through_the_injected_sleep(tmp_path: Path, tails: list[FileTail]) -> None:
    """The loop never really sleeps in tests: the fake sleep appends, rotates, then stops."""
    log = tmp_path / "mail.log"
    write(log, numbered(0, 3))

    def rotate() -> None:
        log.rename(tmp_path / "old")
        write(log, numbered(5, 6), "w")

    steps: list[Callable[[], None]] = [lambda: write(log, numbered(3, 5)), rotate, lambda: None]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        steps.pop(0)()

    tailer = Tailer([keep(tails, FileTail(log, from_start=True))], sleep=sleep, poll_interval=0.5)
    seen: list[str] = []
    for round_ in tailer.batches(stop=lambda: not steps):
        seen += [line for batch in round_ for line in batch.lines]
    assert seen == numbered(0, 6).splitlines()
    assert slept == [0.5, 0.5, 0.5]


def test_tailer_once_ends_when_every_source_is_at_its_end(
    tmp_path: Path, tails: list[FileTail]
) -> None:
    """With once=True the loop returns at the end of the files, without sleeping."""
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    write(a, numbered(0, 2))
    write(b, numbered(2, 4))

    def sleep(seconds: float) -> None:
        raise AssertionError("slept")

    tailer = Tailer(
        [keep(tails, FileTail(a, from_start=True)), keep(tails, FileTail(b, from_start=True))],
        sleep=sleep,
    )
    rounds = list(tailer.batches(stop=lambda: False, once=True))
    assert sorted(line for r in rounds for batch in r for line in batch.lines) == sorted(
        numbered(0, 4).splitlines()
    )


def test_stream_tail_reads_a_pipe_and_finishes_the_last_line() -> None:
    """Standard input style: lines as they come; at the end, the unfinished line too."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as reader:
        tail = StreamTail(reader)
        assert tail.poll().lines == []
        os.write(write_fd, b"one\ntw")
        assert tail.poll().lines == ["one"]
        os.close(write_fd)
        assert tail.poll().lines == ["tw"]
        assert tail.exhausted


def test_state_store_replaces_atomically(tmp_path: Path) -> None:
    """The state is one JSON file, written via a temporary file that never stays behind."""
    store = StateStore(tmp_path / "s")
    assert store.load() is None
    store.save({"a": 1})
    store.save({"a": 2})
    assert store.load() == {"a": 2}
    assert os.listdir(tmp_path / "s") == [StateStore.FILE]


def test_journal_entry_becomes_a_syslog_line() -> None:
    """MESSAGE, SYSLOG_IDENTIFIER, _PID and __REALTIME_TIMESTAMP make the parser's line."""
    entry = {
        "__REALTIME_TIMESTAMP": "1732797119123456",
        "_HOSTNAME": "vm",
        "SYSLOG_IDENTIFIER": "postfix/smtpd",
        "_PID": "19342",
        "MESSAGE": "connect from unknown[127.0.0.1]",
    }
    assert journal_line(entry) == (
        "2024-11-28T12:31:59.123456+00:00 vm postfix/smtpd[19342]: connect from unknown[127.0.0.1]"
    )
    raw = {"MESSAGE": [104, 105, 255], "SYSLOG_IDENTIFIER": "postfix/qmgr"}
    assert journal_line(raw).endswith(" localhost postfix/qmgr: hi\ufffd")


def test_journal_command_keeps_the_cursor_and_the_unit() -> None:
    """Resuming passes --after-cursor; a first start without --from-start reads only new entries."""
    assert journal_command("postfix@-.service", "s=abc", follow=True, from_start=False) == [
        "journalctl",
        "-o",
        "json",
        "--no-pager",
        "-f",
        "--after-cursor",
        "s=abc",
        "-u",
        "postfix@-.service",
    ]
    assert "--lines" in journal_command(None, None, follow=True, from_start=False)
    assert "--no-tail" in journal_command(None, None, follow=False, from_start=True)


def test_journal_tail_without_journalctl_is_a_notice(tmp_path: Path) -> None:
    """A missing journalctl is reported once; the source then counts as ended."""

    def spawn(command: list[str]) -> subprocess.Popen[bytes]:
        raise FileNotFoundError(2, "No such file or directory")

    tail = JournalTail(None, spawn=spawn)
    assert [n.kind for n in tail.poll().notices] == ["journal_error"]
    assert tail.poll().notices == []
    assert tail.exhausted


@pytest.mark.skipif(sys.platform != "linux", reason="inode semantics as on Linux")
def test_position_round_trips_through_json(tmp_path: Path) -> None:
    """FilePosition survives to_dict/from_dict unchanged."""
    pos = FilePosition(1, 2, 3, "abc")
    assert FilePosition.from_dict(json.loads(json.dumps(pos.to_dict()))) == pos


def test_tailer_returns_when_every_pipe_has_closed() -> None:
    """Following only standard input ends when it closes, even without once=True."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"a\nb\n")
    os.close(write_fd)
    with os.fdopen(read_fd, "rb", buffering=0) as reader:
        tailer = Tailer([StreamTail(reader)], sleep=lambda s: None)
        lines = [x for r in tailer.batches(stop=lambda: False) for b in r for x in b.lines]
    assert lines == ["a", "b"]
