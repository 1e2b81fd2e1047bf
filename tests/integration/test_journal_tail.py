"""The journal source reading a journalctl stand-in process (``cat`` of journalctl's JSON)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from smtp_policy.adapters.follow.journal import JournalTail
from smtp_policy.adapters.follow.tail import Batch


def test_journal_tail_maps_entries_and_remembers_the_cursor(tmp_path: Path) -> None:
    """journalctl's JSON output (here from a stand-in process) becomes lines and a cursor."""
    entries = [
        {"__CURSOR": f"c{i}", "__REALTIME_TIMESTAMP": "0", "MESSAGE": f"m{i}", "_PID": "1"}
        for i in range(3)
    ]
    out = tmp_path / "journal.json"
    out.write_text("".join(json.dumps(e) + "\n" for e in entries) + "not json\n")

    def spawn(command: list[str]) -> subprocess.Popen[bytes]:
        assert command[0] == "journalctl"
        return subprocess.Popen(["cat", str(out)], stdout=subprocess.PIPE)

    tail = JournalTail("postfix@-.service", follow=False, spawn=spawn)
    got = Batch("journal")
    while not tail.exhausted:
        batch = tail.poll()
        got.lines += batch.lines
        got.notices += batch.notices
    tail.close()
    assert [line.rsplit(": ", 1)[1] for line in got.lines] == ["m0", "m1", "m2"]
    assert tail.cursor == "c2"
    assert [n.kind for n in got.notices] == ["journal_error"]
