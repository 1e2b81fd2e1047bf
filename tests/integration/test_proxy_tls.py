"""The proxy terminates STARTTLS, with a self-signed certificate made by the openssl CLI."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from smtp_policy.adapters.proxy import tls_context
from smtp_policy.wire.smtp import ServerReply
from tests.proxy_harness import harness, run


@pytest.fixture(name="certificate", scope="module")
def _certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for mx.test (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("tls")
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


def test_starttls_is_terminated_by_the_proxy(certificate: tuple[Path, Path]) -> None:
    """STARTTLS: 220 from the proxy, TLS recorded, plaintext pipelined after it dropped."""
    cert, key = certificate

    async def scenario() -> None:
        async with harness(tls=tls_context(str(cert), str(key))) as h:
            client = await h.client()
            assert "STARTTLS" in (await client.command(b"EHLO client.test")).lines
            client.writer.write(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
            ready = await client.reply()
            assert ready == ServerReply(220, ("2.0.0 Ready to start TLS",))
            await client.start_tls()
            ehlo = await client.command(b"EHLO client.test")
            assert "STARTTLS" not in ehlo.lines
            assert (await client.command(b"STARTTLS")).code == 503
            await client.command(b"QUIT")
            assert not [ln for ln in h.upstream.lines if b"injected" in ln or b"STARTTLS" in ln]
            (tls,) = h.events("tls")
            assert tls["tls_version"].startswith("TLSv1.")
            assert tls["tls_cipher"]
            assert tls["dropped_plaintext"] == len(b"MAIL FROM:<injected@evil.test>\r\n")
            assert h.events()[-1]["tls_version"] == tls["tls_version"]

    run(scenario())


def test_starttls_only_outside_a_transaction(certificate: tuple[Path, Path]) -> None:
    """After an accepted MAIL, STARTTLS gets 503 5.5.1 until RSET ends the transaction."""
    cert, key = certificate

    async def scenario() -> None:
        async with harness(tls=tls_context(str(cert), str(key))) as h:
            client = await h.client()
            await client.command(b"EHLO client.test")
            assert (await client.command(b"MAIL FROM:<s@fake.test>")).code == 250
            refused = await client.command(b"STARTTLS")
            assert refused == ServerReply(503, ("5.5.1 Error: MAIL transaction in progress",))
            assert (await client.command(b"RCPT TO:<a@fake.test>")).code == 250
            assert (await client.command(b"RSET")).code == 250
            assert (await client.command(b"STARTTLS")).code == 220
            await client.start_tls()
            await client.command(b"QUIT")
            assert not h.events("error")

    run(scenario())


def test_inner_session_is_reset_after_the_handshake(certificate: tuple[Path, Path]) -> None:
    """After TLS the proxy sends XCLIENT again (Postfix forgets the plaintext HELO); the
    client does not hear the second greeting."""
    cert, key = certificate

    async def scenario() -> None:
        async with harness(tls=tls_context(str(cert), str(key))) as h:
            client = await h.client()
            await client.command(b"EHLO plain.client.test")
            assert (await client.command(b"STARTTLS")).code == 220
            await client.start_tls()
            assert (await client.command(b"NOOP")).code == 250  # the next reply is NOOP's
            await client.command(b"QUIT")
            sent = [ln.split(None, 1)[0] for ln in h.upstream.lines]
            assert sent == [b"XCLIENT", b"EHLO", b"XCLIENT", b"NOOP", b"QUIT"]
            assert h.upstream.lines[0] == h.upstream.lines[2]
            assert [e["command"] for e in h.events()] == [None, "EHLO", "STARTTLS", "NOOP", "QUIT"]

    run(scenario())


def test_renegotiation_is_off(certificate: tuple[Path, Path]) -> None:
    """The proxy's TLS context refuses renegotiation."""
    cert, key = certificate
    assert tls_context(str(cert), str(key)).options & ssl.OP_NO_RENEGOTIATION
