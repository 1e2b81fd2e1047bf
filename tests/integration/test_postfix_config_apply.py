"""`smtp-policy postfix-config` plans, applies and removes with the real postconf, on temp
config dirs holding a production-like main.cf (OpenDKIM, OpenDMARC, SASL, a DNSBL, postgrey,
a footer table of the admin's), and a real Postfix passes mail through both milters."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from smtp_policy.lab.instance import free_port
from smtp_policy.lab.postfix import PostfixFactory
from tests.helpers import Daemon, running

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
pytestmark = pytest.mark.skipif(not Path(POSTCONF).exists(), reason="postfix is not installed")

DEBIAN_MAIN_CF = Path("/usr/share/postfix/main.cf.debian")
STOCK_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")
PRODUCTION_LINES = """\
myhostname = mx.prod.test
mydestination = $myhostname, localhost
# OpenDKIM and OpenDMARC
smtpd_milters = inet:127.0.0.1:8891,
    inet:127.0.0.1:8893
non_smtpd_milters = $smtpd_milters
milter_default_action = tempfail
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated,
    reject_unauth_destination,
    reject_rbl_client zen.spamhaus.org,
    check_policy_service inet:127.0.0.1:10023
smtpd_reject_footer_maps = hash:/etc/postfix/footers
"""
OUR_MILTER = "{ unix:smtp-policy/milter.sock, default_action=accept, protocol=6"
OUR_POLICY = "check_policy_service { inet:127.0.0.1:8897, timeout=5s, default_action=DUNNO }"


def smtp_policy(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``smtp-policy postfix-config ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "smtp_policy", "postfix-config", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def postconf_n(directory: Path) -> str:
    """``postconf -c DIR -n``."""
    return subprocess.run(
        [POSTCONF, "-c", str(directory), "-n"], capture_output=True, text=True, check=True
    ).stdout


def values(directory: Path) -> dict[str, str]:
    """``postconf -n`` as a dict."""
    return dict(
        line.split(" = ", 1) for line in postconf_n(directory).splitlines() if " = " in line
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line, no traceback."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("smtp-policy postfix-config: "), lines
    return lines[0]


@pytest.fixture(name="prod")
def _prod(tmp_path: Path) -> Path:
    """A config dir with Debian's main.cf plus the production lines, and a bounce template."""
    directory = tmp_path / "postfix"
    directory.mkdir()
    stock = DEBIAN_MAIN_CF.read_text() if DEBIAN_MAIN_CF.exists() else "compatibility_level = 3.6\n"
    (directory / "main.cf").write_text(stock + PRODUCTION_LINES)
    if STOCK_MASTER_CF.exists():
        shutil.copy(STOCK_MASTER_CF, directory / "master.cf")
    else:
        (directory / "master.cf").write_text("smtp inet n - y - - smtpd\n")
    (directory / "smtp-policy-bounce.cf").write_text("")
    return directory


def test_plan_changes_nothing_and_names_every_parameter(prod: Path) -> None:
    before = (prod / "main.cf").read_bytes()
    done = smtp_policy("--postfix-dir", str(prod), "--with-policy")
    assert done.returncode == 0, done.stderr
    for name in ("smtpd_milters", "smtpd_reject_footer_maps", "smtp_delivery_status_filter",
                 "lmtp_delivery_status_filter", "smtpd_recipient_restrictions",
                 "bounce_template_file"):  # fmt: skip
        assert f"change {name}\n" in done.stdout
    assert "keep   smtpd_banner" in done.stdout
    assert "now: inet:127.0.0.1:8891, inet:127.0.0.1:8893" in done.stdout
    assert "milter_default_action = tempfail" in done.stdout
    assert (prod / "main.cf").read_bytes() == before
    assert all(line.startswith("# ") for line in done.stdout.splitlines())
    original = postconf_n(prod)
    with (prod / "main.cf").open("a") as main_cf:  # what the old README said to do
        main_cf.write(done.stdout)
    assert postconf_n(prod) == original
    (prod / "main.cf").write_bytes(before)
    assert sorted(p.name for p in prod.iterdir()) == [
        "main.cf", "master.cf", "smtp-policy-bounce.cf",
    ]  # fmt: skip


def test_apply_merges_is_idempotent_and_remove_restores(prod: Path) -> None:
    original = postconf_n(prod)
    main_cf = (prod / "main.cf").read_bytes()
    done = smtp_policy("--postfix-dir", str(prod), "--with-policy", "--apply")
    assert done.returncode == 0, done.stderr
    got = values(prod)
    assert got["smtpd_milters"].startswith(OUR_MILTER)
    assert got["smtpd_milters"].endswith("}, inet:127.0.0.1:8891, inet:127.0.0.1:8893")
    assert got["smtpd_recipient_restrictions"] == (
        "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination, "
        f"{OUR_POLICY}, reject_rbl_client zen.spamhaus.org, "
        "check_policy_service inet:127.0.0.1:10023"
    )
    assert got["smtpd_reject_footer_maps"] == (
        "hash:/etc/postfix/footers, socketmap:inet:127.0.0.1:8896:footer"
    )
    assert got["bounce_template_file"] == str(prod / "smtp-policy-bounce.cf")
    assert got["smtpd_banner"] == "$myhostname ESMTP $mail_name (Debian/GNU)"
    changed = {k for k in got if got[k] != values_of(original).get(k)}
    assert changed == {
        "smtpd_milters", "smtpd_recipient_restrictions", "smtpd_reject_footer_maps",
        "smtp_delivery_status_filter", "lmtp_delivery_status_filter", "bounce_template_file",
    }  # fmt: skip
    (backup,) = prod.glob("main.cf.smtp-policy-*")
    assert backup.read_bytes() == main_cf
    assert (prod / "smtp-policy.applied.json").exists()

    again = smtp_policy("--postfix-dir", str(prod), "--with-policy", "--apply")
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stdout
    assert values(prod) == got
    assert len(list(prod.glob("main.cf.smtp-policy-*"))) == 1

    removed = smtp_policy("--postfix-dir", str(prod), "--remove")
    assert removed.returncode == 0, removed.stderr
    assert postconf_n(prod) == original
    assert not (prod / "smtp-policy.applied.json").exists()

    nothing = smtp_policy("--postfix-dir", str(prod), "--remove")
    assert nothing.returncode == 0
    assert nothing.stdout.startswith("# nothing to remove:")
    assert nothing.stdout.count("\n") == 1


def values_of(postconf_output: str) -> dict[str, str]:
    """``postconf -n`` text as a dict."""
    return dict(ln.split(" = ", 1) for ln in postconf_output.splitlines() if " = " in ln)


def test_remove_keeps_what_the_admin_added_since(prod: Path) -> None:
    original = values(prod)
    assert smtp_policy("--postfix-dir", str(prod), "--apply").returncode == 0
    milters = values(prod)["smtpd_milters"] + ", inet:127.0.0.1:8894"
    subprocess.run([POSTCONF, "-c", str(prod), "-e", f"smtpd_milters = {milters}"], check=True)
    removed = smtp_policy("--postfix-dir", str(prod), "--remove")
    assert removed.returncode == 0, removed.stderr
    got = values(prod)
    assert got["smtpd_milters"] == original["smtpd_milters"] + ", inet:127.0.0.1:8894"
    assert got == original | {"smtpd_milters": got["smtpd_milters"]}


def test_concurrent_applies_do_not_interleave(prod: Path) -> None:
    """Two applies at once: one writes, the other waits and finds nothing to change."""
    argv = [sys.executable, "-m", "smtp_policy", "postfix-config", "--postfix-dir", str(prod),
            "--with-policy", "--apply"]  # fmt: skip
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted("nothing to change" in out for out, _ in outs) == [False, True]
    got = values(prod)
    assert got["smtpd_milters"].count("smtp-policy/milter.sock") == 1
    assert got["smtpd_recipient_restrictions"].count("8897") == 1
    assert len(list(prod.glob("main.cf.smtp-policy-*"))) == 1
    assert smtp_policy("--postfix-dir", str(prod), "--remove").returncode == 0


def test_half_written_main_cf_is_refused(prod: Path) -> None:
    """A value cut in the middle of a { } group, and a line cut before its '='."""
    main_cf = prod / "main.cf"
    main_cf.write_text(main_cf.read_text() + "smtpd_milters = { inet:127.0.0.1:8891, default_\n")
    before = main_cf.read_bytes()
    line = one_error_line(smtp_policy("--postfix-dir", str(prod), "--apply"))
    assert "smtpd_milters" in line and "'{' without its '}'" in line
    assert main_cf.read_bytes() == before
    assert not list(prod.glob("main.cf.smtp-policy-*"))
    main_cf.write_text(main_cf.read_text() + "smtpd_banner\n")
    line = one_error_line(smtp_policy("--postfix-dir", str(prod), "--apply"))
    assert "missing '='" in line


def test_main_cf_without_a_final_newline_is_refused_before_any_write(prod: Path) -> None:
    """postconf -e would glue our parameter to the admin's last line: one line, no backup."""
    main_cf = prod / "main.cf"
    main_cf.write_bytes(main_cf.read_bytes().rstrip(b"\n"))
    before = main_cf.read_bytes()
    line = one_error_line(smtp_policy("--postfix-dir", str(prod), "--apply"))
    assert "does not end with a newline" in line
    assert main_cf.read_bytes() == before
    assert not list(prod.glob("main.cf.smtp-policy-*"))


def test_unreadable_main_cf_and_not_a_postfix_dir(tmp_path: Path, prod: Path) -> None:
    line = one_error_line(smtp_policy("--postfix-dir", str(tmp_path / "nowhere")))
    assert "is not a directory" in line
    (tmp_path / "empty").mkdir()
    line = one_error_line(smtp_policy("--postfix-dir", str(tmp_path / "empty"), "--apply"))
    assert "not a Postfix config directory: no main.cf" in line
    (prod / "main.cf").unlink()
    (prod / "main.cf").symlink_to(prod / "gone.cf")
    line = one_error_line(smtp_policy("--postfix-dir", str(prod), "--remove"))
    assert "no main.cf" in line


def test_a_failed_apply_leaves_main_cf_as_it_was(prod: Path) -> None:
    """The record cannot be written after postconf -e: main.cf comes back from the backup."""
    original = postconf_n(prod)
    (prod / "smtp-policy.applied.json.tmp").mkdir()  # write_record fails on it
    line = one_error_line(smtp_policy("--postfix-dir", str(prod), "--apply"))
    assert "main.cf restored from" in line and "nothing changed" in line
    assert postconf_n(prod) == original


@pytest.mark.postfix
def test_applied_config_passes_mail_through_both_milters(
    tmp_path: Path, make_postfix: PostfixFactory
) -> None:
    """A private Postfix that already runs the admin's milter gets --apply and a reload: mail
    passes, and both the admin's milter and ours saw the message."""
    admin = Daemon("milter", tmp_path, port=free_port(), name="admin-milter")
    ours = Daemon("milter", tmp_path, port=free_port(), name="our-milter")
    admin_entry = f"{{ inet:127.0.0.1:{admin.tcp_port}, default_action=accept }}"
    config = tmp_path / "config.toml"
    config.write_text(f'[milter]\nlisten = "inet:127.0.0.1:{ours.tcp_port}"\n')
    with running(admin, ours):
        pf = make_postfix(milters=admin_entry)
        done = smtp_policy("--postfix-dir", str(pf.config_dir), "--config", str(config), "--apply")
        assert done.returncode == 0, done.stderr
        milters = pf.postconf("-h", "smtpd_milters").strip()
        assert milters.startswith(f"{{ inet:127.0.0.1:{ours.tcp_port}, default_action=accept")
        assert milters.endswith(admin_entry)
        pf.reload()
        with smtplib.SMTP("127.0.0.1", pf.smtp_port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.sendmail(
                "sender@local.test", ["alice@local.test"], b"Subject: both\r\n\r\nhello\r\n"
            )
        (message,) = pf.wait_for_mail("alice", timeout=30)
        assert message["Subject"] == "both"
        assert not pf.log_matches(r"warning: .*milter")  # protocol=6 per milter is accepted
        for milter in (admin, ours):
            milter.wait_for(lambda e: e["event"] == "session" and e["messages"] == 1)
        assert smtp_policy("--postfix-dir", str(pf.config_dir), "--remove").returncode == 0
        assert pf.postconf("-h", "smtpd_milters").strip() == admin_entry


def test_remove_refuses_a_banner_changed_since_with_one_line(prod: Path, tmp_path: Path) -> None:
    """The rest comes back; the banner the admin changed stays, named in one line, exit 1."""
    config = tmp_path / "config.toml"
    config.write_text('[banner]\ngreeting = "{hostname} ESMTP ready"\n')
    original = values(prod)
    assert (
        smtp_policy("--postfix-dir", str(prod), "--config", str(config), "--apply").returncode == 0
    )
    assert values(prod)["smtpd_banner"] == "$myhostname ESMTP ready"
    subprocess.run([POSTCONF, "-c", str(prod), "-e", "smtpd_banner = $myhostname hi"], check=True)
    line = one_error_line(smtp_policy("--postfix-dir", str(prod), "--remove"))
    assert line.startswith("smtp-policy postfix-config: smtpd_banner: changed since --apply")
    assert values(prod) == original | {"smtpd_banner": "$myhostname hi"}
    assert '"smtpd_banner"' in (prod / "smtp-policy.applied.json").read_text()
