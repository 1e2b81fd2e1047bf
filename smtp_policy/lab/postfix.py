"""A private Postfix lab on loopback, for the demo and the tests: a real private Postfix and a
scripted downstream SMTP server.

Theory of operation
-------------------
``PrivatePostfix`` builds a whole Postfix instance in one temp dir (``smtp-policy-postfix-*``)::

    conf/main.cf, conf/master.cf   generated here, never copied from /etc/postfix
    queue/                         queue_directory (root-owned; Postfix creates the subdirs)
    data/                          data_directory (postfix-owned)
    mail/<user>/{new,cur,tmp}      virtual Maildirs (owned by 65534, the virtual agent's uid)
    maillog                        maillog_file, written by postlogd (no syslog needed)

and runs it with ``postfix -c DIR start``. Nothing leaves loopback: DNS is off, mail for
``remote.test`` goes to ``smtp:[127.0.0.1]:<downstream_port>`` (a ``ScriptedServer``), every
other non-local destination is bounced by the ``error`` transport.

Ports (both on 127.0.0.1, chosen free at ``start()``):

* ``smtp_port``: the trusted listener. The client is in ``mynetworks`` (127.0.0.0/8). Relaying
  to domains other than local.test/remote.test is refused anyway, because
  ``smtpd_recipient_restrictions = reject_unauth_destination`` has no ``permit_mynetworks``.
* ``untrusted_port``: the same smtpd with ``-o mynetworks=`` (nobody is trusted) and
  ``syslog_name=postfix/untrusted``, so its lines read ``postfix/untrusted/smtpd[pid]``.
  It shows what an outside client sees (``554 5.7.1 ...: Relay access denied``).

Mail flow: ``{alice,bob,sender,postmaster}@local.test`` are virtual Maildirs; bounces go to the
envelope sender (send from ``sender@local.test`` to read them); the ``notify_classes`` copies
(bounce, 2bounce, delay, resource, software) go to ``postmaster@local.test``, so they never
disturb a count of ``sender``'s mail.

Postfix traps met while building this (checked on Debian 12, Postfix 3.7.11; "TRAP" marks the
code that handles each):

* Postfix's load_file() will not read a config file modified within the last second or so: it
  sleeps 300 ms at a time "to let it settle down". A freshly written main.cf cost ~2.4 s per
  ``postfix`` command, and postfix-script reads the *default* /etc/postfix/main.cf several times
  per command, so right after a ``postconf -e`` there every command (ours and other test
  runs') waited again: starts took 2.5-6.6 s. Both files are now back-dated by 10 s after each
  write; a start takes ~0.3 s.
* ``alternate_config_directories`` in the default main.cf: as root, ``postfix -c DIR`` works
  without it; non-root callers of the set-gid tools need it (``postqueue -c DIR`` as nobody:
  "unauthorized configuration directory name"). Instances register unless ``register=False``
  (the demo: it runs nothing as non-root), under a file lock (several may start at once), keep
  other entries, and remove themselves at stop; the last one out gives main.cf back
  byte-identical, times included (``postconf -X`` when the parameter was not there before).
* ``data_directory`` must belong to ``postfix`` (``fatal: open lock file .../master.lock:
  cannot create file exclusively: Permission denied``), and the temp dir must be searchable by
  others: mkdtemp's 0700 gives ``.../master.lock: cannot open file: Permission denied``.
* ``maillog_file`` must lie under ``maillog_file_prefixes`` and needs the ``postlog`` service.
  A master that cannot bind a listener to an address this host lacks exits before postlogd
  runs: ``postfix start`` exits 1 with nothing on stdout, stderr or in the maillog. (A port
  in use *is* logged: ``fatal: bind 127.0.0.1 port N: Address already in use``.)
* A master that starts with a broken setting still greets: ``queue_run_delay = banana`` only
  makes qmgr log ``fatal: parameter queue_run_delay: bad time value`` and die. ``start()``
  and ``stop()`` therefore fail on any ``fatal:``/``panic:`` line of the instance.
* Daemons get their config dir through MAIL_CONFIG, not argv (``master -w``, ``smtpd -n
  127.0.0.1:PORT -t inet -u``): ``pgrep -f DIR`` finds none of them. All of them chdir to
  queue_directory, which is what ``instance_processes()`` looks for.
* ``postfix stop`` returns in 0.05 s, or in ~1.05 s when its first ``master -t`` check comes
  too early (postfix-script then sleeps a whole second).
* This machine's built-in ``mynetworks`` includes 192.0.2.0/24 (``postconf -d``), so a TEST-NET
  address cannot make a client untrusted; the untrusted listener uses ``-o mynetworks=``
  (checked: ``permit_mynetworks, reject`` accepts on one port and rejects on the other).
* The built-in ``smtpd_relay_restrictions`` end in ``defer_unauth_destination`` (454 4.7.1,
  not 554): it is set explicitly. Debian's master.cf chroots most daemons and a private
  instance has no chroot tree, so every chroot column is ``n``.
* In an ``inline:`` table a value with spaces needs its own braces (``{ key = some text }``);
  without them trivial-rewrite logs ``missing '=' after attribute name`` and every RCPT to the
  domain gets ``451 4.3.0 Temporary lookup failure``: warnings, not fatal errors.
* ``notify_classes = bounce`` also mails postmaster a transcript of each rejected SMTP session
  (from ``double-bounce@``), not only bounce copies: count postmaster's mail with care.
* Postfix folds long DSN fields (``Diagnostic-Code``) at 79 columns with 4-space indents, and
  the email package keeps that whitespace when unfolding: compare collapsed text
  (``DeliveryReport`` does).
* smtplib's ``mail()`` does not send EHLO by itself: without an explicit ``ehlo()`` Postfix logs
  ``proto=SMTP`` and no ``helo=<...>``.
"""

from __future__ import annotations

import contextlib
import email.policy
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from email import message_from_bytes
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from smtp_policy.lab.instance import MailLab, WaitTimeoutError, free_port, poll

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
DEFAULT_CONFIG_DIR = Path("/etc/postfix")
REGISTRY = "alternate_config_directories"
MYHOSTNAME = "mx.smtp-policy.test"
LOCAL_DOMAIN = "local.test"
REMOTE_DOMAIN = "remote.test"
USERS = ("alice", "bob", "sender", "postmaster")
VIRTUAL_UID = 65534
TEMP_PREFIX = "smtp-policy-postfix-"
_REGISTRY_LOCK = Path(tempfile.gettempdir()) / "smtp-policy-postfix.registry.lock"
_FATAL = r"postfix(/[\w.-]+)*\[\d+\]: (fatal|panic): "


class PostfixError(RuntimeError):
    """Postfix could not be started or stopped cleanly; the message carries the maillog tail."""


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a Postfix command line, capturing its output; never raises on a non-zero exit."""
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def _greeting(port: int) -> str | None:
    """The first line the SMTP server on ``port`` sends, or None if nothing answers yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            data = b""
            while b"\n" not in data:
                chunk = s.recv(512)
                if not chunk:
                    return None
                data += chunk
            s.sendall(b"QUIT\r\n")
            return data.decode("ascii", "replace").splitlines()[0]
    except OSError:
        return None


def _ours(entry: str) -> bool:
    """An ``alternate_config_directories`` entry made by this module (any instance)."""
    return entry.startswith(str(Path(tempfile.gettempdir()) / TEMP_PREFIX))


def _registry_dirs(value: str) -> list[str]:
    return [d for d in re.split(r"[\s,]+", value.strip()) if d]


def _postconf_edit(config_dir: Path, *args: str) -> None:
    done = _run(POSTCONF, "-c", str(config_dir), *args)
    if done.returncode != 0:
        raise PostfixError(f"postconf {' '.join(args)} failed: {done.stderr.strip()}")


def _edit_registry(
    *,
    add: Path | None = None,
    remove: Path | None = None,
    config_dir: Path = DEFAULT_CONFIG_DIR,
    lock_path: Path = _REGISTRY_LOCK,
) -> None:
    """Add/remove a config dir in the default instance's ``alternate_config_directories``.

    TRAP: non-root ``postqueue -c DIR`` / ``sendmail -C DIR`` accept DIR only when the default
    main.cf lists it. Existing entries are kept; entries left behind by crashed runs of this
    module (our prefix, directory gone) are pruned. A file lock serialises concurrent instances.

    The first of our entries to arrive saves main.cf as it was (whether the parameter was set,
    its value, the file's digest and times) beside the lock; the last to leave gives that back:
    ``postconf -X`` when the parameter was not set, the saved value otherwise, and the saved
    times when the bytes are the same again. So a run leaves main.cf byte-identical, unless
    someone else changed it meanwhile (then their values are kept and only ours go).
    """
    main_cf = config_dir / "main.cf"
    saved_path = lock_path.with_suffix(".json")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        explicit = bool(_run(POSTCONF, "-c", str(config_dir), "-n", REGISTRY).stdout.strip())
        current = _run(POSTCONF, "-c", str(config_dir), "-h", REGISTRY).stdout.strip()
        dirs = _registry_dirs(current)
        wanted = [d for d in dirs if d != str(remove) and not (_ours(d) and not Path(d).exists())]
        if add is not None and str(add) not in wanted:
            wanted.append(str(add))
        if wanted == dirs:
            return
        if not any(_ours(d) for d in dirs):
            raw = main_cf.read_bytes()
            if raw and not raw.endswith(b"\n"):
                # TRAP: postconf -e appends to the last line when the file lacks a final newline.
                raise PostfixError(f"{main_cf} does not end with a newline: not registering")
            stat = main_cf.stat()
            saved = {
                "explicit": explicit,
                "value": current,
                "sha256": hashlib.sha256(raw).hexdigest(),
                "times_ns": [stat.st_atime_ns, stat.st_mtime_ns],
            }
            saved_path.write_text(json.dumps(saved))
        if any(_ours(d) for d in wanted):
            _postconf_edit(config_dir, "-e", f"{REGISTRY} = {', '.join(wanted)}")
            # TRAP: postfix-script reads the default main.cf several times per command, and a
            # just-written file makes each read sleep up to ~2.4 s (see _backdate_config).
            past = time.time() - 10
            os.utime(main_cf, (past, past))
            return
        _give_back_registry(config_dir, saved_path, wanted)


def _give_back_registry(config_dir: Path, saved_path: Path, wanted: list[str]) -> None:
    """The last of our entries leaves: restore what main.cf had before the first arrived."""
    main_cf = config_dir / "main.cf"
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError):
        saved = None  # no record (e.g. /tmp was cleaned): keep the other entries, drop ours
    if isinstance(saved, dict) and wanted == _registry_dirs(str(saved.get("value", ""))):
        if saved.get("explicit"):
            _postconf_edit(config_dir, "-e", f"{REGISTRY} = {saved['value']}")
        else:
            _postconf_edit(config_dir, "-X", REGISTRY)
        if hashlib.sha256(main_cf.read_bytes()).hexdigest() == saved.get("sha256"):
            atime, mtime = saved["times_ns"]
            os.utime(main_cf, ns=(int(atime), int(mtime)))
    elif wanted:
        _postconf_edit(config_dir, "-e", f"{REGISTRY} = {', '.join(wanted)}")
    else:
        _postconf_edit(config_dir, "-X", REGISTRY)
    saved_path.unlink(missing_ok=True)


def instance_processes(root: Path) -> list[int]:
    """PIDs of live processes whose cwd is inside ``root`` or whose argv names it.

    TRAP: Postfix daemons are started with MAIL_CONFIG in the environment, not ``-c DIR``: the
    master's argv is ``master -w``, a child's ``smtpd -n 127.0.0.1:PORT -t inet -u``, so
    ``pgrep -f DIR`` finds none of them. Every daemon does chdir(queue_directory), though.
    """
    prefix = f"{root}/"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie left for init to reap is not running
            cwd = os.readlink(proc / "cwd")
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{cwd}/".startswith(prefix) or str(root) in argv:
            found.append(int(proc.name))
    return found


def _inline(entries: Mapping[str, str]) -> str:
    """An ``inline:{ key=value, ... }`` table.

    TRAP: a value with spaces or commas needs its own braces, ``{ key = text, more }``; bare,
    trivial-rewrite logs ``missing '=' after attribute name`` and every lookup tempfails (451).
    """
    pairs = (
        f"{{ {k} = {v} }}" if re.search(r"[\s,{}]", v) else f"{k}={v}" for k, v in entries.items()
    )
    return "inline:{ " + ", ".join(pairs) + " }"


class PrivatePostfix(MailLab):
    """One private Postfix instance on 127.0.0.1, built in a temp dir and torn down with it.

    Nothing happens until ``start()`` (or ``with PrivatePostfix(...) as pf``).

    Args:
        downstream_port: where ``remote.test`` mail goes (a ``ScriptedServer.port``); without
            one, a port nobody listens on, so such mail is deferred (connection refused).
        main_cf: extra main.cf settings; they override the defaults built here.
        master_cf: extra master.cf lines, appended verbatim.
        milters: the ``smtpd_milters`` value.
        reject_footer: the ``smtpd_reject_footer`` value.
        reject_footer_maps: the ``smtpd_reject_footer_maps`` value.
        delivery_status_filter: the ``smtp_delivery_status_filter`` value.
        discard: route local.test, remote.test and everything else to ``discard:`` (load tests).
        maximal_queue_lifetime: how long deferred mail is retried (``0`` = one attempt).
        bounce_queue_lifetime: the same for bounces.
        keep: keep the temp dir after ``stop()``; default: env ``KEEP_POSTFIX`` is set.
        register: list the instance in /etc/postfix/main.cf's ``alternate_config_directories``
            while it runs (needed only by non-root ``postqueue -c``/``sendmail -C``).
    """

    def __init__(
        self,
        *,
        downstream_port: int | None = None,
        main_cf: Mapping[str, str] | None = None,
        master_cf: Sequence[str] = (),
        milters: str | None = None,
        reject_footer: str | None = None,
        reject_footer_maps: str | None = None,
        delivery_status_filter: str | None = None,
        discard: bool = False,
        maximal_queue_lifetime: str = "1h",
        bounce_queue_lifetime: str = "1h",
        keep: bool | None = None,
        register: bool = True,
    ) -> None:
        self.downstream_port = downstream_port
        self.extra_main_cf = dict(main_cf or {})
        self.extra_master_cf = list(master_cf)
        self.milters = milters
        self.reject_footer = reject_footer
        self.reject_footer_maps = reject_footer_maps
        self.delivery_status_filter = delivery_status_filter
        self.discard = discard
        self.maximal_queue_lifetime = maximal_queue_lifetime
        self.bounce_queue_lifetime = bounce_queue_lifetime
        self.keep = bool(os.environ.get("KEEP_POSTFIX")) if keep is None else keep
        self.register = register
        self._root: Path | None = None
        self._ports: tuple[int, int] | None = None
        self._running = False
        self._log_start = 0  # maillog line where the current start attempt began
        self._dead_port = 0  # remote.test's nexthop when there is no downstream_port

    # -- layout ---------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The temp dir holding the whole instance."""
        if self._root is None:
            raise PostfixError("not started")
        return self._root

    @property
    def config_dir(self) -> Path:
        """The instance's config directory (``postfix -c`` argument)."""
        return self.root / "conf"

    @property
    def queue_dir(self) -> Path:
        """``queue_directory``."""
        return self.root / "queue"

    @property
    def mail_dir(self) -> Path:
        """``virtual_mailbox_base``: one Maildir per user below it."""
        return self.root / "mail"

    @property
    def maillog(self) -> Path:
        """``maillog_file``."""
        return self.root / "maillog"

    @property
    def smtp_port(self) -> int:
        """The trusted smtpd listener (client in mynetworks; relaying still refused)."""
        if self._ports is None:
            raise PostfixError("not started")
        return self._ports[0]

    @property
    def untrusted_port(self) -> int:
        """The untrusted smtpd listener (empty mynetworks): ``554 5.7.1 Relay access denied``."""
        if self._ports is None:
            raise PostfixError("not started")
        return self._ports[1]

    # -- configuration --------------------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        """The main.cf settings this instance runs with (defaults, then options, then extras)."""
        root = self.root
        remote_port = self.downstream_port or self._dead_port
        mailboxes = {f"{u}@{LOCAL_DOMAIN}": f"{u}/" for u in USERS}
        nowhere = "error:5.7.1 the private test Postfix delivers nowhere but its transport_maps"
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(root / "queue"),
            "data_directory": str(root / "data"),
            # maillog_file is refused outside maillog_file_prefixes.
            "maillog_file_prefixes": f"/var, /dev/stdout, {root}",
            "maillog_file": str(self.maillog),
            "myhostname": MYHOSTNAME,
            "mydomain": "smtp-policy.test",
            "myorigin": LOCAL_DOMAIN,
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtpd_banner": "$myhostname ESMTP",
            "virtual_mailbox_domains": LOCAL_DOMAIN,
            "virtual_mailbox_maps": _inline(mailboxes),
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_uid_maps": f"static:{VIRTUAL_UID}",
            "virtual_gid_maps": f"static:{VIRTUAL_UID}",
            "relay_domains": REMOTE_DOMAIN,
            "transport_maps": _inline({REMOTE_DOMAIN: f"smtp:[127.0.0.1]:{remote_port}"}),
            "default_transport": nowhere,
            "relay_transport": nowhere,
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            # TRAP: the built-in default ends in defer_unauth_destination (454, not 554).
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "reject_unauth_destination",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": self.maximal_queue_lifetime,
            "bounce_queue_lifetime": self.bounce_queue_lifetime,
            "notify_classes": "bounce, 2bounce, delay, resource, software",
            "bounce_notice_recipient": f"postmaster@{LOCAL_DOMAIN}",
            "2bounce_notice_recipient": f"postmaster@{LOCAL_DOMAIN}",
            "delay_notice_recipient": f"postmaster@{LOCAL_DOMAIN}",
            "error_notice_recipient": f"postmaster@{LOCAL_DOMAIN}",
            # A stalled downstream (ScriptedServer STALL) costs seconds, not the 300s default.
            "smtp_connect_timeout": "5s",
            "smtp_helo_timeout": "5s",
            "smtp_mail_timeout": "5s",
            "smtp_rcpt_timeout": "5s",
            "smtp_data_init_timeout": "5s",
            "smtp_data_xfer_timeout": "5s",
            "smtp_data_done_timeout": "5s",
            "smtp_quit_timeout": "5s",
        }
        if self.discard:
            discard = "discard:private test Postfix in discard mode"
            settings["transport_maps"] = _inline({LOCAL_DOMAIN: discard, REMOTE_DOMAIN: discard})
            settings["default_transport"] = settings["relay_transport"] = discard
        optional = {
            "smtpd_milters": self.milters,
            "smtpd_reject_footer": self.reject_footer,
            "smtpd_reject_footer_maps": self.reject_footer_maps,
            "smtp_delivery_status_filter": self.delivery_status_filter,
        }
        settings.update({k: v for k, v in optional.items() if v is not None})
        settings.update(self.extra_main_cf)
        return settings

    def master_cf(self) -> list[str]:
        """The master.cf lines: Debian's services, all unchrooted, plus the two listeners."""
        # chroot column n everywhere: a private instance has no populated chroot.
        return [
            f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd",
            f"127.0.0.1:{self.untrusted_port} inet n - n - - smtpd",
            "  -o syslog_name=postfix/untrusted",
            "  -o mynetworks=",  # TRAP: the built-in default trusts 192.0.2.0/24 here
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp -o syslog_name=postfix/$service_name",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "local unix - n n - - local",
            "virtual unix - n n - - virtual",
            "lmtp unix - - n - - lmtp",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            # maillog_file needs postlogd; without this service nothing is logged.
            "postlog unix-dgram n - n - 1 postlogd",
            *self.extra_master_cf,
        ]

    def _write_config(self) -> None:
        """(Re)write main.cf and master.cf for the current ports."""
        main = "".join(f"{k} = {v}\n" for k, v in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(main)
        (self.config_dir / "master.cf").write_text("\n".join(self.master_cf()) + "\n")
        self._backdate_config()

    def _backdate_config(self) -> None:
        """Set main.cf and master.cf mtimes 10 s into the past.

        TRAP: Postfix's load_file() will not read a file modified in the last second or so;
        it sleeps 300 ms at a time "to let it settle down". A freshly written main.cf made
        every ``postfix start``/``reload``/``flush`` ~2.4 s slower.
        """
        past = time.time() - 10
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))

    def _make_tree(self) -> None:
        """Create the temp dir with conf/, queue/, data/, mail/ and the right owners."""
        self._root = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        # TRAP: mkdtemp gives 0700; daemons that dropped privileges must traverse it.
        self._root.chmod(0o755)
        for name in ("conf", "queue", "data", "mail"):
            (self._root / name).mkdir(mode=0o755)
        postfix_user = pwd.getpwnam("postfix")
        # TRAP: data_directory must belong to postfix (master.lock), Maildirs to the virtual uid.
        os.chown(self._root / "data", postfix_user.pw_uid, postfix_user.pw_gid)
        os.chown(self.mail_dir, VIRTUAL_UID, VIRTUAL_UID)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Build, register (see ``register``) and start the instance; return once both greet.

        Raises:
            PostfixError: Postfix did not start; the message holds its output and maillog tail.
        """
        if self._running:
            return self
        self._make_tree()
        self._dead_port = free_port()
        try:
            if self.register:
                _edit_registry(add=self.config_dir)
            for attempt in range(3):
                self._ports = (free_port(), free_port())
                self._write_config()
                self._log_start = len(self.maillog_lines())  # fatal lines of failed tries are old
                done = _run(POSTFIX, "-c", str(self.config_dir), "start")
                if done.returncode == 0:
                    break
                # TRAP: a master that cannot bind a listener may die before postlogd runs and
                # leave no trace at all. A probed free port can also be taken before the
                # master binds it, so try other ports before giving up.
                if attempt == 2:
                    check = _run(POSTFIX, "-c", str(self.config_dir), "check")
                    raise PostfixError(
                        self._explain("postfix start failed (3 tries, fresh ports each)", done)
                        + "\n--- postfix check ---\n"
                        + (check.stdout + check.stderr or "(no complaints)")
                        + "\nAn empty maillog means the master died before postlogd started:"
                        " usually a listener it could not bind (inet_interfaces, master.cf)."
                    )
            self._running = True
            for port in (self.smtp_port, self.untrusted_port):
                greeting = poll(
                    partial(_greeting, port), timeout, partial("220 on {}".format, port)
                )
                if not greeting.startswith("220 "):
                    raise PostfixError(self._explain(f"greeting on {port}: {greeting!r}"))
            # TRAP: a broken setting can kill a daemon (qmgr) while smtpd still greets.
            if self.log_matches(_FATAL, since=self._log_start):
                raise PostfixError(self._explain("Postfix logged fatal errors while starting"))
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Postfix, wait until none of its processes is left, and remove the temp dir.

        Safe to call twice and after a failed start. Removes the dir unless ``keep``.

        Raises:
            PostfixError: the maillog has ``fatal:``/``panic:`` lines (a broken setup must not
                pass), or processes survived ``postfix stop`` (they are killed first).
        """
        if self._root is None:
            return
        problem = "\n".join(self.log_matches(_FATAL, since=self._log_start))
        if problem:
            problem = f"Postfix logged fatal errors (a broken setup):\n{problem}\n"
        if self._running or self.processes():
            done = _run(POSTFIX, "-c", str(self.config_dir), "stop")
            self._running = False
            try:
                poll(lambda: True if not self.processes() else None, timeout, self._describe)
            except WaitTimeoutError as e:
                problem += f"{e}\n{done.stdout}{done.stderr}"
                for pid in self.processes():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if self.register:
            with contextlib.suppress(PostfixError):
                _edit_registry(remove=self.config_dir)
        root, self._root, self._ports = self._root, None, None
        if self.keep:
            print(f"KEEP_POSTFIX: private Postfix kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        if problem:
            raise PostfixError(problem)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def processes(self) -> list[int]:
        """PIDs of this instance's live processes (see ``instance_processes``)."""
        return instance_processes(self.root)

    def _describe(self) -> str:
        """What is still running, for a stop timeout."""
        lines = []
        for pid in self.processes():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                lines.append(f"{pid} {argv.decode(errors='replace')}")
        return "Postfix processes to exit: " + "; ".join(lines)

    # -- operations -----------------------------------------------------------------------

    def postfix(self, *args: str) -> str:
        """Run ``postfix -c DIR ARGS``; return its output or raise PostfixError."""
        done = _run(POSTFIX, "-c", str(self.config_dir), *args)
        if done.returncode != 0:
            raise PostfixError(self._explain(f"postfix {' '.join(args)} failed", done))
        return done.stdout + done.stderr

    def postconf(self, *args: str) -> str:
        """Run ``postconf -c DIR ARGS`` (e.g. ``-e``, ``-h name``) and return its stdout."""
        done = _run(POSTCONF, "-c", str(self.config_dir), *args)
        self._backdate_config()  # in case it edited main.cf or master.cf
        if done.returncode != 0:
            raise PostfixError(f"postconf {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def delete_queued(self, queue_id: str = "ALL") -> None:
        """Remove a queued message (or all of them) with ``postsuper -d``."""
        done = _run("/usr/sbin/postsuper", "-c", str(self.config_dir), "-d", queue_id)
        if done.returncode != 0:
            raise PostfixError(f"postsuper -d {queue_id}: {done.stderr.strip()}")

    def flush(self) -> None:
        """Ask the queue manager to retry all deferred mail now (``postfix flush``)."""
        self.postfix("flush")

    def reload(self, timeout: float = 20.0) -> None:
        """``postfix reload`` and wait until the master logs that it re-read the config.

        ``postfix reload`` only sends SIGHUP; the log line makes sure the master acted on it.
        """
        pattern = r"postfix/master\[\d+\]: reload -- version"
        before = len(self.log_matches(pattern))
        self.postfix("reload")
        self.wait_for_log(pattern, timeout, count=before + 1)

    # -- observation ----------------------------------------------------------------------

    def mailbox(self, user: str) -> list[EmailMessage]:
        """The messages in ``user``'s Maildir (new/ and cur/), oldest first."""
        files = [
            f
            for sub in ("new", "cur")
            if (self.mail_dir / user / sub).is_dir()
            for f in (self.mail_dir / user / sub).iterdir()
        ]
        files.sort(key=lambda f: (f.stat().st_mtime_ns, f.name))
        return [
            message_from_bytes(f.read_bytes(), _class=EmailMessage, policy=email.policy.default)
            for f in files
        ]

    def queue_files(self) -> list[Path]:
        """Queue files in incoming/, active/, deferred/, hold/ and maildrop/."""
        queues = ("incoming", "active", "deferred", "hold", "maildrop")
        return [
            f
            for q in queues
            if (self.queue_dir / q).is_dir()
            for f in (self.queue_dir / q).rglob("*")
            if f.is_file()
        ]

    def _explain(self, what: str, done: subprocess.CompletedProcess[str] | None = None) -> str:
        """An error message: what failed, the command's output and the maillog tail."""
        output = f"\n{done.stdout}{done.stderr}".rstrip() if done else ""
        return f"{what}{output}{self._tail()}"


class PostfixFactory:
    """Starts ``PrivatePostfix(**options)`` on demand; ``close()`` tears every one down.

    ``close()`` stops all instances even if one fails to stop, then fails if any process of an
    instance survived (``pgrep -f DIR`` plus the cwd check of ``instance_processes``).
    """

    def __init__(self) -> None:
        self._started: list[tuple[PrivatePostfix, Path]] = []

    def __call__(self, **options: Any) -> PrivatePostfix:
        """Create and start an instance (the options are PrivatePostfix's)."""
        pf = PrivatePostfix(**options).start()
        self._started.append((pf, pf.root))
        return pf

    def close(self) -> None:
        """Stop everything started here, newest first.

        Raises:
            AssertionError: an instance failed to stop cleanly or left processes behind.
        """
        problems = []
        while self._started:
            pf, root = self._started.pop()
            try:
                pf.stop()
            except PostfixError as e:
                problems.append(str(e))
            pgrep = _run("pgrep", "-af", str(root)).stdout
            if pgrep or instance_processes(root):
                problems.append(f"processes left for {root}: {pgrep or instance_processes(root)}")
        if problems:
            raise AssertionError("\n".join(problems))
