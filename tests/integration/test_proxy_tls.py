"""The proxy terminates STARTTLS, with a self-signed certificate made by the openssl CLI."""

from __future__ import annotations

import shutil
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
