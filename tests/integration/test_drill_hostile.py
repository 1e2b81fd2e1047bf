"""Drill 5 (issue 7): hostile clients against the private Postfix with the milter on.

The cases test_milter_postfix.py already covers (8-bit and invalid UTF-8 in HELO, MAIL, RCPT
and headers, NUL in a header, a 10 kB address, a client gone mid-DATA) are joined here by
the ones that need volume: 1,000 recipients in one pipelined transaction, a whole session
written before the greeting, NUL bytes and bare LFs inside commands, and 50 clients that drop
at once mid-DATA. Throughout, every reply line a client reads is well formed (``NNN`` then
space or dash, CRLF-terminated, no NUL), the milter records what happened, writes no error
event and keeps serving.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from tests.integration.drills import size
from tests.integration.test_milter_postfix import Ev, MilterProcess

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

#: One reply line as the wire must carry it.
REPLY_LINE = re.compile(rb"[2-5]\d\d[ -][^\r\n\x00]*\r\n")


@pytest.fixture(name="milter", scope="module")
def _milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    proc = MilterProcess(tmp_path_factory.mktemp("hostile")).start()
    yield proc
    proc.stop()


@pytest.fixture(name="pf", scope="module")
def _pf(milter: MilterProcess, make_module_postfix: PostfixFactory) -> PrivatePostfix:
    # Room for the mid-DATA crowd at full size: 200 clients at once from one address (the
    # defaults, 100 processes and anvil's 50 connections per client, would turn them away).
    limits = {"default_process_limit": "300", "smtpd_client_connection_count_limit": "0"}
    return make_module_postfix(milters=milter.postfix_milters, discard=True, main_cf=limits)


def _read_replies(sock: socket.socket, count: int) -> list[bytes]:
    """Exactly ``count`` whole replies; every line is checked against REPLY_LINE."""
    buf = b""
    replies: list[bytes] = []
    lines: list[bytes] = []
    while len(replies) < count:
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(replies)} replies: {lines!r}")
            buf += chunk
        line, _, buf = buf.partition(b"\n")
        line += b"\n"
        assert REPLY_LINE.fullmatch(line), line
        lines.append(line)
        if line[3:4] == b" ":
            replies.append(b"".join(lines))
            lines = []
    return replies


def _connect(pf: PrivatePostfix) -> socket.socket:
    return socket.create_connection(("127.0.0.1", pf.smtp_port), timeout=60)


def _no_errors(milter: MilterProcess) -> None:
    errors = [e for e in milter.events.read() if e["event"] == "error"]
    assert not errors, errors
    assert milter.proc is not None and milter.proc.poll() is None


def _session_of(milter: MilterProcess, match: Callable[[Ev], bool]) -> str:
    (event,) = milter.wait_for(match, timeout=60)
    return str(event.get("session"))


def test_a_thousand_pipelined_recipients(
    pf: PrivatePostfix, milter: MilterProcess, drill_report: Callable[[str], None]
) -> None:
    """1,001 RCPTs in one write: 1,000 accepted, the last one 452, all delivered once."""
    count = 1000  # Postfix's smtpd_recipient_limit
    rcpts = [f"r{i}@remote.test" for i in range(count + 1)]
    with _connect(pf) as sock:
        _read_replies(sock, 1)
        sock.sendall(b"EHLO many.test\r\nMAIL FROM:<many@local.test>\r\n")
        _read_replies(sock, 2)
        sock.sendall(b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts))
        replies = _read_replies(sock, len(rcpts))
        sock.sendall(b"DATA\r\n")
        assert _read_replies(sock, 1)[0][:3] == b"354"
        sock.sendall(b"Subject: many\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        final, _ = _read_replies(sock, 2)
    codes = [r[:3] for r in replies]
    assert codes[:count] == [b"250"] * count and codes[count][:1] == b"4", codes[count]
    m = re.search(rb"queued as ([0-9A-F]+)", final)
    assert final[:3] == b"250" and m, final
    qid = m.group(1).decode()
    sent = pf.wait_for_log(rf"{qid}: to=<r\d+@remote\.test>.*status=sent", 120, count=count)
    delivered = {re.search(r"to=<(r\d+)@", line).group(1) for line in sent}  # type: ignore[union-attr]
    assert len(sent) == count and len(delivered) == count
    session = _session_of(milter, lambda e: e.get("stage") == "eom" and e.get("queue_id") == qid)
    (summary,) = milter.wait_for(lambda e: e["event"] == "session" and e.get("session") == session)
    assert summary["recipients_accepted"] == count
    assert summary["commands"]["rcpt"] == count  # Postfix's own 452 never reaches the milter
    _no_errors(milter)
    drill_report(
        f"{len(rcpts)} RCPTs pipelined: {codes.count(b'250')} x 250, 1 x {codes[count].decode()}; "
        f"{len(sent)} delivered, {len(delivered)} distinct; milter saw {summary['commands']['rcpt']}"
    )


def test_a_whole_session_written_before_the_greeting(
    pf: PrivatePostfix, milter: MilterProcess, drill_report: Callable[[str], None]
) -> None:
    """A client that talks first and never waits: well-formed replies, recorded, delivered."""
    marker = "eager@local.test"
    script = (
        b"EHLO eager.test\r\nMAIL FROM:<" + marker.encode() + b">\r\n"
        b"RCPT TO:<alice@local.test>\r\nDATA\r\nSubject: eager\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    )
    with _connect(pf) as sock:
        sock.sendall(script)
        replies = _read_replies(sock, 7)
    codes = [r[:3].decode() for r in replies]
    assert codes[0] == "220" and codes[-1] == "221", codes
    accepted = codes == ["220", "250", "250", "250", "354", "250", "221"]
    milter.wait_for(lambda e: e["event"] == "session" and e.get("helo") == "eager.test", 60)
    if accepted:
        pf.wait_for_log(r"from=<eager@local\.test>")
    _no_errors(milter)
    drill_report(f"pre-greeting session: replies {' '.join(codes)}")


@pytest.mark.parametrize(
    ("command", "label"),
    [
        (b"MAIL FROM:<nul\x00byte@local.test>", "nul-in-mail"),
        (b"RCPT TO:<alice\x00@local.test>", "nul-in-rcpt"),
        (b"MAIL FROM:<bare@local.test>\nRCPT TO:<alice@local.test>", "bare-lf"),
        (b"HELO " + b"h" * 5000, "5k-helo"),
        (b"\xff\xfe\x00\x01" * 64, "binary-command"),
    ],
)
def test_garbage_commands_get_well_formed_replies(
    pf: PrivatePostfix, milter: MilterProcess, command: bytes, label: str
) -> None:
    """NUL, bare LF, huge and binary commands: every reply well formed, the milter unhurt."""
    with _connect(pf) as sock:
        _read_replies(sock, 1)
        sock.sendall(b"EHLO garbage.test\r\n")
        _read_replies(sock, 1)
        sock.sendall(command + b"\r\n")
        replies = _read_replies(sock, 1 + command.count(b"\n"))
        sock.sendall(b"QUIT\r\n")
        with contextlib.suppress(ConnectionError):  # Postfix may have hung up already
            replies += _read_replies(sock, 1)
    assert all(r[:1] in b"2345" for r in replies), (label, replies)
    _no_errors(milter)


def test_many_clients_drop_mid_data_at_once(
    pf: PrivatePostfix, milter: MilterProcess, drill_report: Callable[[str], None]
) -> None:
    """Clients cut off inside DATA all at once: every session recorded, nothing delivered."""
    clients = size(ci=50, full=200)
    ready, go = threading.Barrier(clients + 1), threading.Event()
    failures: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with _connect(pf) as sock:
                _read_replies(sock, 1)
                sock.sendall(f"EHLO drop{n}.test\r\nMAIL FROM:<drop{n}@local.test>\r\n".encode())
                sock.sendall(b"RCPT TO:<alice@local.test>\r\nDATA\r\n")
                assert _read_replies(sock, 4)[-1][:3] == b"354"
                sock.sendall(b"Subject: cut\r\n\r\n" + b"x" * 5000)
                ready.wait(60)
                go.wait(60)
        except BaseException as exc:  # reported below
            failures.append(exc)
            ready.abort()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: reported below
        ready.wait(120)
    go.set()  # every socket closes at once
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    gone = milter.wait_for(
        lambda e: e["event"] == "session" and str(e.get("helo", "")).startswith("drop"),
        timeout=120,
        count=clients,
    )
    assert all(e["messages"] == 0 for e in gone)
    assert not pf.log_matches(r"qmgr\[\d+\]: \w+: from=<drop\d+@local\.test>")  # never queued
    lost = pf.log_matches(r"lost connection after DATA .* from localhost\[127\.0\.0\.1\]")
    assert len(lost) >= clients
    _no_errors(milter)
    drill_report(f"{clients} clients cut mid-DATA at once: {len(gone)} sessions recorded, 0 sent")


def test_still_serving_afterwards(pf: PrivatePostfix, milter: MilterProcess) -> None:
    """After all of the above an ordinary message is recorded stage by stage."""
    with _connect(pf) as sock:
        _read_replies(sock, 1)
        sock.sendall(b"EHLO after.test\r\nMAIL FROM:<after@local.test>\r\n")
        sock.sendall(b"RCPT TO:<alice@local.test>\r\nDATA\r\n")
        assert _read_replies(sock, 4)[-1][:3] == b"354"
        sock.sendall(b"Subject: after\r\n\r\nfine\r\n.\r\nQUIT\r\n")
        final, _ = _read_replies(sock, 2)
    assert final[:3] == b"250", final
    milter.wait_for(lambda e: e.get("stage") == "eom" and e.get("helo") == "after.test", 60)
    _no_errors(milter)
