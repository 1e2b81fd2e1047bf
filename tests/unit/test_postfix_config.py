"""`smtp-policy postfix-config` prints main.cf lines Postfix accepts."""

from __future__ import annotations

import shutil

from smtp_policy.config.postfix import milter_endpoint, socketmap

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"


def test_addresses_are_written_the_way_postfix_wants_them() -> None:
    """libmilter's inet:PORT@HOST becomes inet:HOST:PORT; spool sockets become chroot-relative."""
    assert milter_endpoint("inet:8895@127.0.0.1") == "inet:127.0.0.1:8895"
    assert milter_endpoint("unix:/var/spool/postfix/smtp-policy/milter.sock") == (
        "unix:smtp-policy/milter.sock"
    )
    assert socketmap("inet:127.0.0.1:8896", "dsn") == "socketmap:inet:127.0.0.1:8896:dsn"
    assert socketmap("unix:/run/smtp-policy/maps.sock", "footer") == (
        "proxy:socketmap:unix:/run/smtp-policy/maps.sock:footer"
    )
