"""The SMTP front proxy in front of a real private Postfix (``smtp-policy proxy`` as a process).

The Postfix instance gets a third smtpd listener, the *inner* one, which trusts the proxy for
XCLIENT (the lines ``smtp-policy proxy --print-postfix-config`` prints). Clients connect to
the proxy; the proxy connects to the inner listener. The module shares one Postfix and one
proxy; the test that stops Postfix under a live session starts its own pair.
"""

from __future__ import annotations

import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtp_policy.lab.instance import free_port
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from smtp_policy.wire.smtp import ReplyReader, ServerReply
from tests.helpers import Daemon

pytestmark = pytest.mark.postfix

SENDER = "sender@local.test"
CONFIG = """
[banner]
greeting = "{hostname} ESMTP proxied greeting"
goodbye = "Goodbye from the proxy"

[texts.code.503]
external = "Commands out of order: say MAIL FROM first"

[texts.code.501]
external = "That address does not look right"
"""


def inner_listener(port: int) -> list[str]:
    """The master.cf lines of the smtpd that trusts the proxy (as --print-postfix-config)."""
    return [
        f"127.0.0.1:{port} inet n - n - - smtpd",
        "  -o syslog_name=postfix/proxied",
        "  -o smtpd_authorized_xclient_hosts=127.0.0.1",
        "  -o smtpd_client_port_logging=yes",
    ]


def start_proxy(tmp: Path, inner_port: int, *extra: str) -> Daemon:
    """Start ``smtp-policy proxy`` on a free port in front of ``inner_port``."""
    config = tmp / "config.toml"
    config.write_text(CONFIG)
    upstream = ("--upstream", f"127.0.0.1:{inner_port}", "--config", str(config))
    return Daemon("proxy", tmp, *upstream, *extra, port=free_port()).start()


def is_reply(predicate: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    """``predicate`` over the proxy's reply events only."""
    return lambda e: e["event"] == "reply" and predicate(e)


def make_certificate(where: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for mx.test (openssl CLI)."""
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=mx.test"),
            *("-days", "1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(name="inner_port", scope="module")
def _inner_port() -> int:
    return free_port()


@pytest.fixture(name="pf", scope="module")
def _pf(make_module_postfix: PostfixFactory, inner_port: int) -> PrivatePostfix:
    return make_module_postfix(master_cf=inner_listener(inner_port))


@pytest.fixture(name="proxy", scope="module")
def _proxy(
    pf: PrivatePostfix, inner_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required (scripts/install-deps installs it)")
    tmp = tmp_path_factory.mktemp("proxy")
    cert, key = make_certificate(tmp)
    proxy = start_proxy(tmp, inner_port, "--tls-cert", str(cert), "--tls-key", str(key))
    yield proxy
    proxy.stop()


class RawClient:
    """A socket client that can pipeline: send many lines, then read many replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.replies = ReplyReader()

    def reply(self) -> ServerReply:
        """The next whole reply."""
        while (reply := self.replies.next_reply()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.replies.feed(data)
        return reply

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def at_eof(self) -> bool:
        """Whether the server closed the connection."""
        return self.sock.recv(1) == b""

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def test_greeting_and_goodbye_are_the_admins(proxy: Daemon) -> None:
    """The client sees [banner]'s 220 and 221 texts, not Postfix's hard-coded ones."""
    client = RawClient(proxy.tcp_port)
    greeting = client.reply()
    assert greeting == ServerReply(220, ("mx.smtp-policy.test ESMTP proxied greeting",))
    client.send(b"QUIT\r\n")
    assert client.reply() == ServerReply(221, ("2.0.0 Goodbye from the proxy",))
    assert client.at_eof()
    client.close()
    (bye,) = proxy.wait_for(is_reply(lambda e: e["command"] == "QUIT"))
    assert bye.get("text") == "221 2.0.0 Bye"
    assert bye.get("friendly") == "Goodbye from the proxy"


def test_503_and_501_are_recorded_and_rewritten(proxy: Daemon) -> None:
    """Postfix's own protocol errors get the admin's texts; events keep Postfix's originals."""
    with smtplib.SMTP("127.0.0.1", proxy.tcp_port, local_hostname="errors.client.test") as smtp:
        smtp.ehlo()
        code, text = smtp.docmd("RCPT", "TO:<alice@local.test>")
        assert (code, text) == (503, b"5.5.1 Commands out of order: say MAIL FROM first")
        code, text = smtp.docmd("MAIL", "FROM:<bad address@@local.test")
        assert (code, text) == (501, b"5.1.7 That address does not look right")
    (e503,) = proxy.wait_for(
        is_reply(lambda e: e.get("code") == 503 and e.get("helo") == "errors.client.test")
    )
    assert e503.get("text") == "503 5.5.1 Error: need MAIL command"
    assert e503["command"] == "RCPT"
    assert e503["rewritten"] is True
    (e501,) = proxy.wait_for(
        is_reply(lambda e: e.get("code") == 501 and e.get("helo") == "errors.client.test")
    )
    assert e501.get("text") == "501 5.1.7 Bad sender address syntax"
    assert e501.get("friendly") == "That address does not look right"


def test_postfix_sees_the_real_client_through_xclient(proxy: Daemon, pf: PrivatePostfix) -> None:
    """The maillog shows the client's own port and HELO name, as XCLIENT passed them on."""
    client_port = free_port()
    helo = f"xclient-{uuid.uuid4().hex[:8]}.client.test"
    with smtplib.SMTP(
        "127.0.0.1", proxy.tcp_port, local_hostname=helo, source_address=("127.0.0.1", client_port)
    ) as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        code, _ = smtp.rcpt("someone@elsewhere.test")
        assert code == 554
        assert smtp.rcpt("alice@local.test")[0] == 250
        code, reply = smtp.data(b"Subject: via proxy\r\n\r\nhello\r\n")
    assert code == 250
    queue_id = re.search(rb"queued as ([0-9A-F]+)", reply)
    assert queue_id is not None
    client = rf"localhost\[127\.0\.0\.1\]:{client_port}"
    pf.wait_for_log(
        rf"postfix/proxied/smtpd\[\d+\]: NOQUEUE: reject: RCPT from {client}: 554 5\.7\.1 "
        rf".*proto=ESMTP helo=<{re.escape(helo)}>"
    )
    pf.wait_for_log(rf"{queue_id[1].decode()}: client={client}$")
    (received,) = pf.wait_for_mail("alice", match=lambda m: helo in str(m["Received"]))
    assert f"from {helo} (localhost [127.0.0.1])" in str(received["Received"])


def test_client_xclient_is_refused(proxy: Daemon, pf: PrivatePostfix) -> None:
    """A client's own XCLIENT gets 502 5.5.1 and never reaches Postfix."""
    fake = "192.0.2.213"
    with smtplib.SMTP("127.0.0.1", proxy.tcp_port, local_hostname="sneaky.client.test") as smtp:
        smtp.ehlo()
        assert "xclient" not in smtp.esmtp_features
        code, _ = smtp.docmd("XCLIENT", f"ADDR={fake} NAME=trusted.example")
        assert code == 502
        smtp.mail(SENDER)
        assert smtp.rcpt("someone@elsewhere.test")[0] == 554
    pf.wait_for_log(r"helo=<sneaky\.client\.test>")
    assert not pf.log_matches(re.escape(fake))
    assert not pf.log_matches("trusted.example")


def _has_net_ssleay() -> bool:
    """Whether swaks can do TLS (Debian: libnet-ssleay-perl)."""
    done = subprocess.run(["perl", "-MNet::SSLeay", "-e1"], capture_output=True, check=False)
    return done.returncode == 0


def test_starttls_end_to_end_with_swaks(proxy: Daemon, pf: PrivatePostfix) -> None:
    """swaks --tls: the proxy terminates TLS, Postfix delivers, the event names the cipher."""
    if not _has_net_ssleay():
        pytest.skip("swaks --tls needs Net::SSLeay: apt-get install libnet-ssleay-perl")
    subject = f"tls {uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(proxy.tcp_port), "--tls",
         "--ehlo", "tls.client.test", "--from", SENDER, "--to", "bob@local.test",
         "--header", f"Subject: {subject}", "--timeout", "20"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TLS started" in done.stdout
    assert "<~  250 2.0.0 Ok: queued as" in done.stdout
    assert pf.wait_for_mail("bob", match=lambda m: m["Subject"] == subject)
    _check_tls_events(proxy, "tls.client.test")


def test_starttls_end_to_end_with_smtplib(proxy: Daemon, pf: PrivatePostfix) -> None:
    """smtplib's starttls(): after TLS the client must EHLO again and no longer sees STARTTLS."""
    subject = f"tls {uuid.uuid4().hex[:8]}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", proxy.tcp_port, local_hostname="tls2.client.test") as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert smtp.starttls(context=context)[0] == 220
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        smtp.sendmail(SENDER, ["bob@local.test"], f"Subject: {subject}\r\n\r\nhi\r\n")
    assert pf.wait_for_mail("bob", match=lambda m: m["Subject"] == subject)
    _check_tls_events(proxy, "tls2.client.test")


def _check_tls_events(proxy: Daemon, helo: str) -> None:
    """A tls event was written, and the end-of-data reply carries its version and cipher."""
    (eom,) = proxy.wait_for(is_reply(lambda e: e.get("stage") == "eom" and e.get("helo") == helo))
    assert eom["tls_version"].startswith("TLSv1.")
    assert eom["tls_cipher"]
    assert eom.get("code") == 250
    versions = {(e["tls_version"], e["tls_cipher"]) for e in proxy.events.of("tls")}
    assert (eom["tls_version"], eom["tls_cipher"]) in versions


PIPELINED = (
    b"MAIL FROM:<sender@local.test>\r\n"
    b"RCPT TO:<alice@local.test>\r\n"
    b"RCPT TO:<nosuchuser@local.test>\r\n"
    b"RCPT TO:<bob@local.test>\r\n"
    b"RCPT TO:<someone@elsewhere.test>\r\n"
    b"DATA\r\n"
)
MESSAGE = b"Subject: pipelined\r\n\r\n..dot-stuffed\r\nbody\r\n.\r\n"


def pipelined_session(port: int) -> list[tuple[int, str | None]]:
    """Two pipelined transactions; every reply as (code, enhanced code)."""
    client = RawClient(port)
    replies = [client.reply()]
    client.send(b"EHLO pipelining.client.test\r\n")
    replies.append(client.reply())
    for _ in range(2):
        client.send(PIPELINED)
        replies += [client.reply() for _ in range(6)]
        client.send(MESSAGE)
        replies.append(client.reply())
    client.send(b"RSET\r\nNOOP\r\nQUIT\r\n")
    replies += [client.reply() for _ in range(3)]
    client.close()
    return [(r.code, _enhanced(r)) for r in replies]


def _enhanced(reply: ServerReply) -> str | None:
    m = re.match(r"\d\.\d{1,3}\.\d{1,3}\b", reply.lines[0])
    return m[0] if m else None


def test_pipelining_matches_the_direct_path(proxy: Daemon, pf: PrivatePostfix) -> None:
    """Pipelined transactions with several recipients: reply for reply as straight to Postfix."""
    direct = pipelined_session(pf.smtp_port)
    proxied = pipelined_session(proxy.tcp_port)
    assert [code for code, _ in proxied] == [code for code, _ in direct]
    assert proxied[2:] == direct[2:]
    assert [code for code, _ in direct][2:9] == [250, 250, 550, 250, 554, 354, 250]


def test_upstream_stopped_mid_session_gives_421(
    make_postfix: PostfixFactory, tmp_path: Path
) -> None:
    """Postfix stopped under a live session: the client hears 421 and the proxy closes."""
    inner = free_port()
    pf = make_postfix(master_cf=inner_listener(inner))
    proxy = start_proxy(tmp_path, inner)
    try:
        client = RawClient(proxy.tcp_port)
        assert client.reply().code == 220
        client.send(b"EHLO stop.client.test\r\n")
        assert client.reply().code == 250
        pf.stop()
        client.send(b"NOOP\r\n")
        reply = client.reply()
        assert reply.code == 421
        assert client.at_eof()
        client.close()
        assert proxy.wait_for(is_reply(lambda e: e.get("code") == 421))
    finally:
        proxy.stop()


def test_upstream_down_gives_421_4_3_0(tmp_path: Path) -> None:
    """Nothing listens upstream: the proxy greets, then 421 4.3.0 to the first command,
    logged as an error event."""
    proxy = start_proxy(tmp_path, free_port())
    try:
        client = RawClient(proxy.tcp_port)
        assert client.reply().code == 220
        client.send(b"EHLO down.client.test\r\n")
        reply = client.reply()
        assert reply.code == 421
        assert reply.lines[0].startswith("4.3.0 ")
        assert client.at_eof()
        client.close()
        assert proxy.events.of("error")
    finally:
        proxy.stop()


def test_print_postfix_config() -> None:
    """--print-postfix-config prints the inner listener with XCLIENT trust for the proxy."""
    argv = [sys.executable, "-m", "smtp_policy", "proxy", "--print-postfix-config"]
    done = subprocess.run(
        [*argv, "--upstream", "127.0.0.1:10026"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "127.0.0.1:10026 inet n - y - - smtpd" in done.stdout
    assert "-o smtpd_authorized_xclient_hosts=127.0.0.1" in done.stdout
    assert "  -o smtpd_forbid_bare_newline=normalize\n" in done.stdout
    assert "  -o smtpd_forbid_bare_newline_exclusions=\n" in done.stdout


def test_sighup_rereads_the_texts(pf: PrivatePostfix, inner_port: int, tmp_path: Path) -> None:
    """SIGHUP: new sessions get the new [banner] greeting; a reload event is written."""
    proxy = start_proxy(tmp_path, inner_port)
    try:
        config = tmp_path / "config.toml"
        config.write_text(CONFIG.replace("proxied greeting", "greeting after reload"))
        proxy.send_signal(signal.SIGHUP)
        proxy.wait_for(lambda e: e["event"] == "reloaded", 10)
        client = RawClient(proxy.tcp_port)
        assert client.reply().lines == ("mx.smtp-policy.test ESMTP greeting after reload",)
        client.send(b"QUIT\r\n")
        assert client.reply().code == 221
        client.close()
    finally:
        proxy.stop()
