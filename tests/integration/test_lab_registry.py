"""The lab's ``alternate_config_directories`` registration gives main.cf back byte for byte.

Each test edits a copy of a Debian main.cf in a temp dir through the real ``postconf -c DIR``,
with its own lock (and so its own saved record): /etc/postfix is never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtp_policy.lab.postfix import POSTCONF, TEMP_PREFIX, PostfixError, _edit_registry

pytestmark = pytest.mark.postfix

MAIN_CF = """\
# See /usr/share/postfix/main.cf.dist for a commented, more complete version
smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)
biff = no
relayhost =
mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128
inet_interfaces = loopback-only
"""


@pytest.fixture(name="postfix_dir")
def _postfix_dir(tmp_path: Path) -> Path:
    if not Path(POSTCONF).exists():
        pytest.skip(f"{POSTCONF} is missing (scripts/install-deps installs Postfix)")
    conf = tmp_path / "etc-postfix"
    conf.mkdir()
    (conf / "master.cf").write_text("")
    return conf


def _write(conf: Path, text: str) -> tuple[bytes, int]:
    main = conf / "main.cf"
    main.write_text(text)
    os.utime(main, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return main.read_bytes(), main.stat().st_mtime_ns


@pytest.fixture(name="instances")
def _instances() -> Iterator[list[Path]]:
    """Two config dirs named as PrivatePostfix names them (the prefix marks an entry as ours)."""
    roots = [Path(tempfile.mkdtemp(prefix=TEMP_PREFIX)) for _ in range(2)]
    for root in roots:
        (root / "conf").mkdir()
    yield [root / "conf" for root in roots]
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def test_registry_absent_before_is_removed_again_with_times(
    postfix_dir: Path, instances: list[Path], tmp_path: Path
) -> None:
    before, mtime = _write(postfix_dir, MAIN_CF)
    lock = tmp_path / "registry.lock"
    first, second = instances
    _edit_registry(add=first, config_dir=postfix_dir, lock_path=lock)
    _edit_registry(add=second, config_dir=postfix_dir, lock_path=lock)
    during = (postfix_dir / "main.cf").read_text()
    assert f"alternate_config_directories = {first}, {second}" in during
    _edit_registry(remove=first, config_dir=postfix_dir, lock_path=lock)
    _edit_registry(remove=second, config_dir=postfix_dir, lock_path=lock)
    assert (postfix_dir / "main.cf").read_bytes() == before
    assert (postfix_dir / "main.cf").stat().st_mtime_ns == mtime
    assert not lock.with_suffix(".json").exists()


def test_registry_keeps_the_admins_entries_and_their_value(
    postfix_dir: Path, instances: list[Path], tmp_path: Path
) -> None:
    before, mtime = _write(
        postfix_dir, MAIN_CF + "alternate_config_directories = /etc/postfix-out\n"
    )
    lock = tmp_path / "registry.lock"
    (first, _) = instances
    _edit_registry(add=first, config_dir=postfix_dir, lock_path=lock)
    assert f"= /etc/postfix-out, {first}\n" in (postfix_dir / "main.cf").read_text()
    _edit_registry(remove=first, config_dir=postfix_dir, lock_path=lock)
    assert (postfix_dir / "main.cf").read_bytes() == before
    assert (postfix_dir / "main.cf").stat().st_mtime_ns == mtime


def test_registry_after_a_crash_prunes_the_dead_entry_and_restores(
    postfix_dir: Path, instances: list[Path], tmp_path: Path
) -> None:
    """An instance killed before its stop leaves its entry; the next run's last one cleans up."""
    before, _ = _write(postfix_dir, MAIN_CF)
    lock = tmp_path / "registry.lock"
    crashed, later = instances
    _edit_registry(add=crashed, config_dir=postfix_dir, lock_path=lock)
    shutil.rmtree(crashed.parent)  # the crashed run's temp dir is gone, its entry is not
    _edit_registry(add=later, config_dir=postfix_dir, lock_path=lock)
    assert str(crashed) not in (postfix_dir / "main.cf").read_text()
    _edit_registry(remove=later, config_dir=postfix_dir, lock_path=lock)
    assert (postfix_dir / "main.cf").read_bytes() == before


def test_registry_refuses_a_main_cf_without_final_newline(
    postfix_dir: Path, instances: list[Path], tmp_path: Path
) -> None:
    """postconf -e would glue the parameter onto the last line: refuse instead."""
    before, _ = _write(postfix_dir, MAIN_CF.rstrip("\n"))
    with pytest.raises(PostfixError, match="does not end with a newline"):
        _edit_registry(add=instances[0], config_dir=postfix_dir, lock_path=tmp_path / "r.lock")
    assert (postfix_dir / "main.cf").read_bytes() == before
