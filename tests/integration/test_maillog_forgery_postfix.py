"""Issue 16, item 6, on a real Postfix: the crafted recipient's reject line, as Postfix logs it,
parses to the real sender, recipient and HELO."""

from __future__ import annotations

import socket
import time

import pytest

from smtp_policy.lab.postfix import PostfixFactory
from smtp_policy.maillog.parse import parse_line

pytestmark = pytest.mark.postfix

RCPT = (
    '"; from=<ceo@bank.example> to=<forged@victim.example> proto=ESMTP '
    'helo=<forged.helo"@external.example'
)


def _chat(port: int, commands: list[str]) -> list[str]:
    """Send each command after the greeting; the last line of each reply."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        stream = sock.makefile("rwb")
        for command in [None, *commands]:
            if command is not None:
                stream.write(command.encode() + b"\r\n")
                stream.flush()
            while (line := stream.readline().decode())[3:4] == "-":
                pass
            replies.append(line.rstrip())
    return replies


def test_crafted_recipient_on_a_real_postfix(make_postfix: PostfixFactory) -> None:
    pf = make_postfix()
    replies = _chat(
        pf.untrusted_port,
        [
            'EHLO a;b<c> d"e helo=<x @y',
            "MAIL FROM:<real@sender.example>",
            f"RCPT TO:<{RCPT}>",
            "QUIT",
        ],
    )
    assert replies[3].startswith("554 5.7.1 "), replies
    deadline = time.monotonic() + 20
    while not (lines := [ln for ln in pf.maillog.read_text().splitlines() if "reject: RCPT" in ln]):
        assert time.monotonic() < deadline, "no reject line logged"
        time.sleep(0.2)
    record = parse_line(lines[-1])
    assert record is not None and record.kind == "smtpd_reject"
    assert record.sender == "real@sender.example"
    assert record.recipient == RCPT  # logged quoted, as the client sent it
    assert record.helo == "a?b?c??d?e?helo=?x??y"
    assert record.proto == "ESMTP"
    assert record.reply is not None and record.reply.endswith(": Relay access denied")
    assert record.reply.startswith("554 5.7.1 <; from=<ceo@bank.example>")
