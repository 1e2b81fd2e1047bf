"""Postfix's main.cf, read and written only through ``postconf -c DIR``.

:class:`PostfixDir` checks that DIR is a Postfix config directory, reads the parameters set in
main.cf (``postconf -n``) and whether smtpd is chrooted (``postconf -M``), and writes a plan
(:func:`commit`) all or nothing: under a lock on DIR, a timestamped backup of main.cf first,
then ``postconf -e``/``-X``, a check with ``postconf -n``, and the backup copied back on any
failure. The record of what an apply changed is ``DIR/smtp-policy.applied.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from smtp_policy.config.postfix import Applied, Plan, applied_values
from smtp_policy.core.errors import SmtpPolicyError

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
RECORD_NAME = "smtp-policy.applied.json"
BACKUP_PREFIX = "main.cf.smtp-policy-"
#: How long a second --apply/--remove waits for the first to finish.
LOCK_WAIT = 60.0
_TIMEOUT = 60.0


class PostconfError(SmtpPolicyError):
    """main.cf cannot be read or written as asked; nothing was left half done."""


def default_config_dir() -> Path:
    """Postfix's own config directory (``postconf -h config_directory``)."""
    return Path(_postconf("-h", "config_directory").strip())


def _postconf(*args: str) -> str:
    """Run postconf; its stdout, or PostconfError with its last error line."""
    try:
        done = subprocess.run(
            [POSTCONF, *args], capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostconfError(f"cannot run {POSTCONF}: {exc}") from exc
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise PostconfError(lines[-1] if lines else f"postconf {' '.join(args)} failed")
    return done.stdout


def parse_parameters(text: str) -> dict[str, str]:
    """``postconf -n`` output as ``{name: value}``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    return values


def chrooted_smtpd(master_services: str) -> bool:
    """Whether ``postconf -M`` output shows an smtpd whose chroot column is ``y`` or ``-``
    (Debian's master.cf and older Postfix defaults chroot it)."""
    for line in master_services.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[7] == "smtpd" and fields[4] in ("y", "-"):
            return True
    return False


class PostfixDir:
    """One Postfix config directory, read and written through ``postconf -c DIR``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.main_cf = path / "main.cf"
        self.record_path = path / RECORD_NAME

    def postconf(self, *args: str) -> str:
        """``postconf -c DIR ARGS``."""
        return _postconf("-c", str(self.path), *args)

    def check(self) -> None:
        """PostconfError unless DIR is a directory holding a readable main.cf."""
        if not self.path.is_dir():
            raise PostconfError(f"{self.path} is not a directory")
        if not self.main_cf.is_file():
            raise PostconfError(f"{self.path} is not a Postfix config directory: no main.cf")
        try:
            with self.main_cf.open("rb") as main_cf:
                main_cf.read(1)
        except OSError as exc:
            raise PostconfError(f"cannot read {self.main_cf}: {exc.strerror}") from exc

    def check_final_newline(self) -> None:
        """PostconfError if main.cf does not end with a newline: ``postconf -e`` would append
        our first parameter to the admin's last line and corrupt both."""
        try:
            with self.main_cf.open("rb") as main_cf:
                size = main_cf.seek(0, os.SEEK_END)
                last = main_cf.seek(size - 1) if size else None
                ends = main_cf.read(1) if last is not None else b"\n"
        except OSError as exc:
            raise PostconfError(f"cannot read {self.main_cf}: {exc.strerror}") from exc
        if ends != b"\n":
            raise PostconfError(
                f"{self.main_cf} does not end with a newline: postconf would join its last line "
                "with ours; add one (echo >> main.cf) and run this again"
            )

    def read(self) -> tuple[dict[str, str], list[str]]:
        """The parameters main.cf sets (``postconf -n``, without config_directory) and what
        postconf warns about it (``overriding earlier entry`` and the like)."""
        try:
            done = subprocess.run(
                [POSTCONF, "-c", str(self.path), "-n"],
                capture_output=True,
                text=True,
                timeout=_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostconfError(f"cannot run {POSTCONF}: {exc}") from exc
        errors = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        if done.returncode != 0:
            why = errors[-1] if errors else f"exit {done.returncode}"
            raise PostconfError(f"{self.path} is not a usable Postfix config dir: {why}")
        values = parse_parameters(done.stdout)
        values.pop("config_directory", None)
        return values, [ln for ln in errors if "warning:" in ln]

    def parameters(self) -> dict[str, str]:
        """The parameters main.cf sets."""
        return self.read()[0]

    def chrooted_smtpd(self) -> bool:
        """Whether master.cf runs an smtpd chrooted."""
        try:
            return chrooted_smtpd(self.postconf("-M"))
        except PostconfError:
            return False

    def queue_directory(self) -> str:
        """``queue_directory``: smtpd's chroot."""
        return self.postconf("-h", "queue_directory").strip()

    # -- the record ---------------------------------------------------------------------------

    def read_record(self) -> dict[str, Applied]:
        """What earlier applies changed (empty when there is no record)."""
        try:
            data = json.loads(self.record_path.read_text())
            return {
                name: Applied(entry["before"], entry["value"], tuple(entry.get("added", ())))
                for name, entry in data["applied"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PostconfError(f"cannot read the record {self.record_path}: {exc}") from exc

    def write_record(self, record: Mapping[str, Applied]) -> None:
        """Write the record atomically (or delete it when there is nothing left)."""
        if not record:
            self.record_path.unlink(missing_ok=True)
            return
        data = {
            "about": "what `smtp-policy postfix-config --apply` changed; --remove reads it",
            "applied": {
                name: {"before": a.before, "value": a.value, "added": list(a.added)}
                for name, a in record.items()
            },
        }
        temp = self.record_path.with_name(self.record_path.name + ".tmp")
        temp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(temp, self.record_path)

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold an exclusive lock on DIR; a second holder waits up to ``wait`` s, then fails."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise PostconfError(
                            f"another postfix-config --apply/--remove holds {self.path} "
                            f"(waited {wait:.0f} s): try again when it is done"
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def backup(self) -> Path:
        """Copy main.cf to ``main.cf.smtp-policy-YYYYmmdd-HHMMSS`` (a new name each time)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path / f"{BACKUP_PREFIX}{stamp}"
        serial = 1
        while target.exists():
            serial += 1
            target = self.path / f"{BACKUP_PREFIX}{stamp}.{serial}"
        try:
            shutil.copy2(self.main_cf, target)
        except OSError as exc:
            raise PostconfError(f"cannot back up {self.main_cf}: {exc}") from exc
        return target

    def restore(self, backup: Path) -> None:
        """Put ``backup`` back as main.cf (atomically)."""
        temp = self.path / f"{BACKUP_PREFIX}restore.tmp"
        shutil.copy2(backup, temp)
        os.replace(temp, self.main_cf)

    def write(self, plan: Plan, before: Mapping[str, str]) -> None:
        """Write ``plan``'s changes with postconf and check them with ``postconf -n``."""
        settings = [f"{c.parameter} = {c.new}" for c in plan.changes if c.new is not None]
        removals = [c.parameter for c in plan.changes if c.new is None]
        if settings:
            self.postconf("-e", *settings)
        if removals:
            self.postconf("-X", *removals)
        expected = applied_values(before, plan)
        got = self.parameters()
        if got != expected:
            wrong = sorted(
                name for name in set(got) | set(expected) if got.get(name) != expected.get(name)
            )
            raise PostconfError(f"postconf -n shows other values than written: {', '.join(wrong)}")


def commit(
    directory: PostfixDir,
    plan: Plan,
    before: Mapping[str, str],
    record: Mapping[str, Applied],
) -> Path:
    """Apply ``plan`` to main.cf and save ``record``, all or nothing (call it under
    :meth:`PostfixDir.locked`). Returns the backup of main.cf taken first."""
    directory.check_final_newline()
    backup = directory.backup()
    try:
        directory.write(plan, before)
        directory.write_record(record)
    except (PostconfError, OSError) as exc:
        try:
            directory.restore(backup)
        except OSError as again:
            raise PostconfError(
                f"{exc}; restoring {directory.main_cf} from {backup} failed too: {again}"
            ) from exc
        raise PostconfError(f"{exc}: main.cf restored from {backup}, nothing changed") from exc
    return backup
