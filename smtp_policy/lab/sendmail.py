"""A private Sendmail 8.17 on loopback for the tests: Debian's binary, unpacked and never installed.

Theory of operation
-------------------
Debian's ``sendmail`` package conflicts with ``postfix``, so ``scripts/install-deps`` only
downloads ``sendmail-bin``, ``sendmail-cf`` and ``m4`` (``apt-get download``) into
:func:`deb_cache`; a test that finds them missing downloads them itself. ``PrivateSendmail``
builds one whole instance in a temp dir (``smtp-policy-sendmail-*``, mode 0755)::

    root/                  the .debs, unpacked with dpkg -x (root/usr/libexec/sendmail/sendmail)
    etc/sendmail.mc, .cf   built here with m4; the shipped config/sendmail/smtp-policy.mc is
                           pasted in verbatim (only its milter port is replaced)
    etc/hosts, nsswitch.conf, service.switch, aliases(.db), helpfile
    queue/                 QueueDirectory (owned by the RunAsUser, 0700)
    mail/<user>/*.eml      one file per message, written by bin/deliver (the local mailer)
    run/                   pid file, statistics, log.sock (root-owned: see the traps)
    log/maillog            what Sendmail sent to syslog, as traditional syslog file lines
    bin/smns, bin/deliver  the namespace wrapper and the local mailer
    bin/smlab, smlab.so    the fallback wrapper and its LD_PRELOAD library (without namespaces)

Sendmail listens on a free port of 127.0.0.1 (``DAEMON_OPTIONS`` ``Name=MTA-test``), relays
every non-local domain to ``[127.0.0.1]:<downstream_port>`` (a ``ScriptedServer``) and
delivers ``USER@HOSTNAME`` to ``mail/USER/``. Any other local name is ``User unknown``
(the local mailer's ``w`` flag needs a passwd entry). DNS is never used: the service switch is
files-only and ``FEATURE(accept_unresolvable_domains)`` takes any sender domain.

The daemon runs as root with ``-bD`` (foreground) inside ``bin/smns``: private UTS and mount
namespaces (``unshare``) in which the host name has a dot, ``/etc/hosts`` and
``/etc/nsswitch.conf`` are the lab's, and ``/dev`` is a small tmpfs holding the usual device
nodes (bind-mounted from the real ``/dev``) and ``/dev/log``, a symlink to ``run/log.sock``.
That socket is a :class:`SyslogSink` owned by the test: it writes every datagram as
``Mon DD HH:MM:SS HOSTNAME sendmail[PID]: text`` to ``log/maillog``, as rsyslog would. Nothing
outside the namespaces changes; the host has no ``/dev/log`` and gets none. Every step of
``smns`` is an ``exec``, so the ``Popen`` pid is the daemon's own.

Where ``unshare`` is not permitted (no CAP_SYS_ADMIN), or ``$SMTP_POLICY_SENDMAIL_NO_NAMESPACES``
forces it, the fallback runs Sendmail in ``bin/smlab`` instead: ``LD_PRELOAD=bin/smlab.so``, a
small library built here with ``cc`` that gives the same three things for the calls Sendmail
makes. ``uname``/``gethostname`` answer the dotted lab host name (no 60 s sleep, below);
``gethostbyname``/``gethostbyname2``/``gethostbyaddr`` read only the lab's hosts file (as
``hosts: files`` would; IPv4 only); ``openlog``/``syslog`` send glibc's datagram to the same
:class:`SyslogSink` (a socket per line: Sendmail closes descriptors it does not know). So both
paths write the same ``log/maillog`` and pass the same tests; ``degraded`` says which one ran.
The lab's copy of the binary loses its setgid bit there (the loader ignores ``LD_PRELOAD`` for
set-id programs). The fallback needs a C compiler (``scripts/install-deps`` installs gcc).

Sendmail traps met while building this (Debian 12, Sendmail 8.17.1.9; research:
sendmail-test-instance.md):

* A host name without a dot makes Sendmail sleep 60 s ("My unqualified host name (vm)
  unknown; sleeping for retry") before it even reads the .cf, so ``confDOMAIN_NAME``,
  ``HostsFile`` and ``ServiceSwitchFile`` (in the .cf or as ``-O``) do not help: the name comes
  from ``gethostname()``, glibc's lookup of it fails or stays undotted, and Sendmail's built-in
  switch (``dns`` first; NXDOMAIN or a timeout ends the search) finds no dotted name either.
  The UTS namespace helps, or (fallback) the preload library's ``gethostname``.
* Wrong m4 names are silently ignored (``confQUEUE_DIR`` gives ``/var/spool/mqueue``): the
  right ones are ``QUEUE_DIR``, ``HELP_FILE``, ``STATUS_FILE``, ``ALIAS_FILE``, ``confPID_FILE``.
  :meth:`PrivateSendmail.start` checks the compiled options.
* ``OSTYPE(linux)`` selects procmail as the local mailer: ``LOCAL_MAILER_*`` are redefined.
* Root Sendmail writes its pid file only into a root-owned directory (``run/``); newaliases
  must run with ``-O RunAsUser=root`` and the db then ``chgrp``-ed to the RunAsUser.
* /tmp is world-writable: without ``DontBlameSendmail=TrustStickyBit`` newaliases fails and
  local mail stays queued.
* 127.0.0.1 may always relay (ruleset ``Relay_ok``): "Relaying denied" needs a client on
  another loopback address (127.0.0.2).
* Load average: Sendmail only queues above ``QueueLA`` and refuses connections above
  ``RefuseLA`` (8 and 12 per CPU); a busy test machine passes that, so both are set high.
* Debian's binary is setgid (group mail): ``LD_PRELOAD`` is ignored until the lab's copy is
  ``chmod 0755`` (it runs as root; the bit is of no use here).
* ``uname`` must be wrapped besides ``gethostname``: glibc's ``gethostname`` calls it internally.
* ``sendmail-bin`` links against libwrap0, which a Postfix machine lacks (install-deps adds it).
* A deferred message is retried with a one-shot queue run, ``-qI<queue id>``
  (:meth:`PrivateSendmail.run_queue`); the daemon itself runs no queue.
"""

from __future__ import annotations

import contextlib
import email.policy
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from email import message_from_bytes
from email.message import EmailMessage
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from smtp_policy.lab.instance import MailLab, WaitTimeoutError, free_port, poll

__all__ = [
    "DAEMON_NAME",
    "FALLBACK",
    "HOSTNAME",
    "NO_NAMESPACES_ENV",
    "PACKAGES",
    "USER",
    "PrivateSendmail",
    "SendmailError",
    "SendmailFactory",
    "SendmailUnavailableError",
    "SyslogSink",
    "availability",
    "deb_cache",
    "ensure_debs",
    "ensure_user",
    "format_syslog",
    "namespaces_permitted",
    "shipped_mc",
]

#: The Debian packages the lab unpacks (``sendmail`` itself conflicts with postfix).
PACKAGES = ("sendmail-bin", "sendmail-cf", "m4")
#: Where scripts/install-deps leaves the .debs; the environment variable overrides it.
DEB_CACHE_ENV = "SMTP_POLICY_SENDMAIL_DEBS"
DEFAULT_DEB_CACHE = Path("/var/cache/smtp-policy/sendmail-debs")
#: Set (to anything but "" or "0") to force the fallback path: no namespaces, even where
#: ``unshare`` works (CI runs the Sendmail tests once this way).
NO_NAMESPACES_ENV = "SMTP_POLICY_SENDMAIL_NO_NAMESPACES"
#: What :attr:`PrivateSendmail.degraded` says on the fallback path.
FALLBACK = (
    "no UTS and mount namespaces (unshare is not permitted here, or "
    f"${NO_NAMESPACES_ENV} is set): Sendmail runs with the bin/smlab.so preload library instead"
)
#: The unprivileged user: RunAsUser, DefaultUser and the one local mailbox (bounces land here).
USER = "smtest"
#: The lab's host name and local domain (the UTS namespace's host name).
HOSTNAME = "mx.sendmail.test"
#: ``Name=`` of the listener: Sendmail's ``{daemon_name}`` macro.
DAEMON_NAME = "MTA-test"
#: The shipped snippet and the milter address in it, which the lab replaces with its own.
SHIPPED_MC = Path(__file__).resolve().parents[2] / "config" / "sendmail" / "smtp-policy.mc"
SHIPPED_SOCKET = "S=inet:8895@127.0.0.1"
TEMP_PREFIX = "smtp-policy-sendmail-"
BINARY = Path("usr/libexec/sendmail/sendmail")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


class SendmailUnavailableError(RuntimeError):
    """This machine cannot run the lab (not root, no packages, no apt)."""


class SendmailError(RuntimeError):
    """Sendmail could not be built, started or stopped cleanly; the message says why."""


def _run(*argv: str | Path, timeout: float = 120, cwd: Path | None = None) -> str:
    """Run a command; SendmailError with its output when it fails."""
    try:
        done = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SendmailError(f"{' '.join(map(str, argv))}: {exc}") from exc
    if done.returncode != 0:
        raise SendmailError(
            f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


# -- packages, user, namespaces ----------------------------------------------------------------


def deb_cache() -> Path:
    """The directory holding the .debs (``$SMTP_POLICY_SENDMAIL_DEBS`` or the default)."""
    return Path(os.environ.get(DEB_CACHE_ENV) or DEFAULT_DEB_CACHE)


def _cached_debs(cache_dir: Path) -> dict[str, Path]:
    """Package name -> its newest .deb in ``cache_dir``."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        debs = sorted(cache_dir.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
        if debs:
            found[package] = debs[-1]
    return found


def ensure_debs(cache_dir: Path | None = None) -> list[Path]:
    """The three .debs, downloaded with ``apt-get download`` into the cache if missing.

    Raises:
        SendmailUnavailableError: they are not cached and apt-get could not fetch them.
    """
    cache_dir = cache_dir or deb_cache()
    found = _cached_debs(cache_dir) if cache_dir.is_dir() else {}
    missing = [p for p in PACKAGES if p not in found]
    if missing:
        if shutil.which("apt-get") is None:
            raise SendmailUnavailableError(f"no {missing} in {cache_dir} and no apt-get")
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            _run("apt-get", "download", "-q", *missing, cwd=cache_dir, timeout=300)
        except (OSError, SendmailError) as exc:
            raise SendmailUnavailableError(
                f"{missing} are not in {cache_dir} and apt-get download failed: {exc}"
            ) from exc
        found = _cached_debs(cache_dir)
        missing = [p for p in PACKAGES if p not in found]
        if missing:
            raise SendmailUnavailableError(f"apt-get download left no {missing} in {cache_dir}")
    return [found[p] for p in PACKAGES]


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    """The lab's unprivileged system user, created (no home, no shell) if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        _run(
            "useradd", "--system", "--user-group", "--no-create-home",
            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name,
        )  # fmt: skip
        return pwd.getpwnam(name)


def namespaces_permitted() -> bool:
    """Whether the lab runs Sendmail in the UTS and mount namespaces of ``smns``: this process
    may create them (and mount a tmpfs in them), and ``$SMTP_POLICY_SENDMAIL_NO_NAMESPACES``
    does not force the fallback."""
    if os.environ.get(NO_NAMESPACES_ENV, "") not in ("", "0"):
        return False
    return _unshare_works()


@cache
def _unshare_works() -> bool:
    """Whether ``unshare --uts --mount`` (and a tmpfs mount inside) works here."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as probe:
        try:
            done = subprocess.run(
                ["unshare", "--uts", "--mount", "--propagation", "private", "--",
                 "sh", "-ec", 'hostname probe.sendmail.test; mount -t tmpfs smns-probe "$1"',
                 "sh", probe],
                capture_output=True, check=False, timeout=30, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0


def availability() -> str | None:
    """Why the lab cannot run here, or None when it can (fetches the .debs if needed)."""
    if os.geteuid() != 0:
        return "a private Sendmail needs root (it binds as root and drops to its RunAsUser)"
    for tool in ("dpkg", "m4"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (scripts/install-deps installs it)"
    if not namespaces_permitted() and not (shutil.which("cc") or shutil.which("gcc")):
        return f"{FALLBACK}, and there is no C compiler (cc) to build it (install gcc)"
    try:
        ensure_debs()
    except SendmailUnavailableError as exc:
        return str(exc)
    return None


def shipped_mc(milter_port: int) -> str:
    """config/sendmail/smtp-policy.mc as shipped, its milter pointed at ``milter_port``.

    Raises:
        SendmailError: the shipped file no longer holds exactly one ``S=inet:8895@127.0.0.1``.
    """
    text = SHIPPED_MC.read_text()
    if text.count(SHIPPED_SOCKET) != 1:
        raise SendmailError(f"{SHIPPED_MC} must name {SHIPPED_SOCKET} exactly once")
    return text.replace(SHIPPED_SOCKET, f"S=inet:{milter_port}@127.0.0.1")


# -- the syslog sink ---------------------------------------------------------------------------

_SYSLOG = re.compile(rb"<(?P<pri>\d{1,3})>(?:(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) )?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def format_syslog(datagram: bytes, hostname: str, now: datetime | None = None) -> str:
    """One syslog(3) datagram as a traditional syslog file line, as rsyslog writes it.

    glibc sends ``<PRI>Mon DD HH:MM:SS TAG[PID]: text``; the line is ``Mon DD HH:MM:SS
    HOSTNAME TAG[PID]: text``. Control characters become ``#ooo`` (octal), as in rsyslog.
    """
    m = _SYSLOG.match(datagram)
    stamp = m["ts"].decode() if m and m["ts"] else None
    rest = datagram[m.end() :] if m else datagram
    if stamp is None:
        stamp = (now or datetime.now()).strftime("%b %d %H:%M:%S")
        if stamp[4] == "0":
            stamp = f"{stamp[:4]} {stamp[5:]}"
    text = rest.decode("utf-8", "backslashreplace").rstrip("\n\0")
    text = _CONTROL.sub(lambda c: f"#{ord(c.group()):03o}", text)
    return f"{stamp} {hostname} {text}"


class SyslogSink:
    """A datagram socket that writes what syslog(3) sends it to a log file, line by line.

    The socket is mode 0666 (Sendmail's children run unprivileged); ``lines`` counts what
    was written. ``stop()`` drains what is still queued before it closes.
    """

    def __init__(self, socket_path: Path, log_path: Path, hostname: str = HOSTNAME) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self.hostname = hostname
        self.lines = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> Self:
        """Bind the socket and write in a background thread."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.socket_path))
        self.socket_path.chmod(0o666)
        sock.settimeout(0.1)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="syslog-sink", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        with self.log_path.open("a", encoding="utf-8") as out:
            while True:
                try:
                    datagram = self._sock.recv(65536)
                except TimeoutError:
                    if self._stopping.is_set():
                        return
                    continue
                except OSError:
                    return
                out.write(format_syslog(datagram, self.hostname) + "\n")
                out.flush()
                self.lines += 1

    def stop(self) -> None:
        """Drain, close and remove the socket."""
        if self._sock is None:
            return
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()
        self._sock = self._thread = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


# -- the instance ------------------------------------------------------------------------------

_SMNS = """#!/bin/sh
# Run a command as the lab's Sendmail needs it: in private UTS and mount namespaces where the
# host name is {hostname}, /etc/hosts and /etc/nsswitch.conf are the lab's, and /dev is a
# tmpfs with the usual device nodes and /dev/log -> the lab's syslog socket. Every step is an
# exec: the caller's pid is the command's. Nothing outside the namespaces changes.
exec unshare --uts --mount --propagation private -- /bin/sh -ec '
  lab=$1; shift
  hostname {hostname}
  mount --bind "$lab/etc/hosts" /etc/hosts
  mount --bind "$lab/etc/nsswitch.conf" /etc/nsswitch.conf
  mount --bind /dev "$lab/run/hostdev"
  mount -t tmpfs -o mode=0755,size=64k smns-dev /dev
  for name in {devices}; do
    [ -e "$lab/run/hostdev/$name" ] || continue
    : > "/dev/$name"
    mount --bind "$lab/run/hostdev/$name" "/dev/$name"
  done
  umount -l "$lab/run/hostdev"
  ln -s /proc/self/fd /dev/fd
  ln -s /proc/self/fd/0 /dev/stdin
  ln -s /proc/self/fd/1 /dev/stdout
  ln -s /proc/self/fd/2 /dev/stderr
  ln -s "$lab/run/log.sock" /dev/log
  exec "$@"' smns {lab} "$@"
"""

_SMLAB = """#!/bin/sh
# Run a command as the lab's Sendmail needs it where namespaces are not permitted: with
# {lab}/bin/smlab.so preloaded (host name {hostname}, the lab's hosts file, syslog to the lab's
# socket). exec: the caller's pid is the command's. Nothing outside the process changes.
LD_PRELOAD={lab}/bin/smlab.so
export LD_PRELOAD
exec "$@"
"""

_SMLAB_C = r"""/* bin/smlab.so: the lab's Sendmail without namespaces (LD_PRELOAD). The host name,
   the hosts file and /dev/log it would have in smns; built by sendmail.py per instance. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define LAB_HOSTNAME "@HOSTNAME@"
#define LAB_HOSTS "@HOSTS@"
#define LAB_LOG "@LOG@"

int uname(struct utsname *buf) {
    int (*real)(struct utsname *) = (int (*)(struct utsname *))dlsym(RTLD_NEXT, "uname");
    int rc = real(buf);
    if (rc == 0)
        snprintf(buf->nodename, sizeof buf->nodename, "%s", LAB_HOSTNAME);
    return rc;
}

int gethostname(char *name, size_t len) {
    if (len < sizeof LAB_HOSTNAME) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(name, LAB_HOSTNAME, sizeof LAB_HOSTNAME);
    return 0;
}

/* -- "hosts: files" with the lab's hosts file, IPv4 only ------------------------------- */

static struct hostent entry;
static char line[1024];
static char *aliases[16];
static struct in_addr address;
static char *addresses[2] = {(char *)&address, NULL};

static struct hostent *found_entry(char *canonical) {
    entry.h_name = canonical;
    entry.h_aliases = aliases;
    entry.h_addrtype = AF_INET;
    entry.h_length = sizeof address;
    entry.h_addr_list = addresses;
    return &entry;
}

static struct hostent *find_host(const char *name, const struct in_addr *addr) {
    if (name != NULL && inet_pton(AF_INET, name, &address) == 1) {
        snprintf(line, sizeof line, "%s", name); /* a literal address names itself */
        aliases[0] = NULL;
        return found_entry(line);
    }
    FILE *hosts = fopen(LAB_HOSTS, "re");
    if (hosts == NULL) {
        h_errno = NO_RECOVERY;
        return NULL;
    }
    while (fgets(line, sizeof line, hosts) != NULL) {
        line[strcspn(line, "#\n")] = '\0';
        char *save = NULL, *field = strtok_r(line, " \t", &save);
        if (field == NULL || inet_pton(AF_INET, field, &address) != 1)
            continue;
        char *canonical = strtok_r(NULL, " \t", &save);
        if (canonical == NULL)
            continue;
        int found = addr != NULL ? address.s_addr == addr->s_addr
                                 : strcasecmp(canonical, name) == 0;
        size_t n = 0;
        while ((field = strtok_r(NULL, " \t", &save)) != NULL && n + 1 < 16) {
            aliases[n++] = field;
            if (addr == NULL && strcasecmp(field, name) == 0)
                found = 1;
        }
        aliases[n] = NULL;
        if (!found)
            continue;
        fclose(hosts);
        return found_entry(canonical);
    }
    fclose(hosts);
    h_errno = HOST_NOT_FOUND;
    return NULL;
}

struct hostent *gethostbyname2(const char *name, int family) {
    if (family != AF_INET) {
        h_errno = HOST_NOT_FOUND;
        return NULL;
    }
    return find_host(name, NULL);
}

struct hostent *gethostbyname(const char *name) { return gethostbyname2(name, AF_INET); }

struct hostent *gethostbyaddr(const void *addr, socklen_t len, int family) {
    if (family != AF_INET || len != sizeof(struct in_addr)) {
        h_errno = HOST_NOT_FOUND;
        return NULL;
    }
    return find_host(NULL, (const struct in_addr *)addr);
}

/* -- syslog(3) to the lab's socket, as glibc would send it to /dev/log --------------------- */

static char ident[64] = "syslog";
static int options, facility = LOG_USER;

void openlog(const char *name, int option, int fac) {
    if (name != NULL)
        snprintf(ident, sizeof ident, "%s", name);
    options = option;
    if (fac != 0)
        facility = fac;
}

void closelog(void) {}

void vsyslog(int priority, const char *format, va_list args) {
    int saved = errno;
    char datagram[8192];
    if ((priority & LOG_FACMASK) == 0)
        priority |= facility;
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    int n = snprintf(datagram, sizeof datagram, "<%d>", priority);
    n += (int)strftime(datagram + n, sizeof datagram - n, "%h %e %T ", &tm);
    if (options & LOG_PID)
        n += snprintf(datagram + n, sizeof datagram - n, "%s[%d]: ", ident, (int)getpid());
    else
        n += snprintf(datagram + n, sizeof datagram - n, "%s: ", ident);
    errno = saved; /* for %m */
    if (n < (int)sizeof datagram)
        n += vsnprintf(datagram + n, sizeof datagram - n, format, args);
    if (n >= (int)sizeof datagram)
        n = sizeof datagram - 1;
    struct sockaddr_un to = {.sun_family = AF_UNIX};
    snprintf(to.sun_path, sizeof to.sun_path, "%s", LAB_LOG);
    /* a socket per line: Sendmail closes descriptors it does not know about */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        sendto(fd, datagram, (size_t)n, 0, (struct sockaddr *)&to, sizeof to);
        close(fd);
    }
    errno = saved;
}

void syslog(int priority, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsyslog(priority, format, args);
    va_end(args);
}

void __vsyslog_chk(int priority, int flag, const char *format, va_list args) {
    (void)flag;
    vsyslog(priority, format, args);
}

void __syslog_chk(int priority, int flag, const char *format, ...) {
    va_list args;
    (void)flag;
    va_start(args, format);
    vsyslog(priority, format, args);
    va_end(args);
}
"""

_DELIVER = """#!/bin/sh
# The local mailer: one file per message in {mail}/USER/ (runs as {user}).
set -e
umask 077
dir="{mail}/$1"
mkdir -p "$dir"
tmp=$(mktemp "$dir/.new.XXXXXX")
cat > "$tmp"
mv "$tmp" "$dir/$(date +%s%N).$$.eml"
"""

_MC = """divert(-1)
include(`{root}/usr/share/sendmail/cf/m4/cf.m4')
divert(0)dnl
VERSIONID(`smtp_policy test instance')dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{hostname}')dnl
define(`QUEUE_DIR', `{lab}/queue')dnl
define(`confPID_FILE', `{lab}/run/sendmail.pid')dnl
define(`STATUS_FILE', `{lab}/run/statistics')dnl
define(`ALIAS_FILE', `{lab}/etc/aliases')dnl
define(`HELP_FILE', `{lab}/etc/helpfile')dnl
define(`confSERVICE_SWITCH_FILE', `{lab}/etc/service.switch')dnl
define(`confHOSTS_FILE', `{lab}/etc/hosts')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confRUN_AS_USER', `{user}:{user}')dnl
define(`confDEF_USER_ID', `{user}:{user}')dnl
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
define(`confLOG_LEVEL', `14')dnl
define(`confMILTER_LOG_LEVEL', `14')dnl
define(`confDELIVERY_MODE', `{delivery_mode}')dnl
define(`confQUEUE_LA', `1000')dnl
define(`confREFUSE_LA', `1000')dnl
define(`confTO_IDENT', `0')dnl
define(`SMART_HOST', `esmtp:[127.0.0.1]')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {downstream_port}')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {downstream_port}')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`no_default_msa')dnl
LOCAL_DOMAIN(`{hostname}')dnl
define(`LOCAL_MAILER_PATH', `{lab}/bin/deliver')dnl
define(`LOCAL_MAILER_ARGS', `deliver $u')dnl
define(`LOCAL_MAILER_FLAGS', `Pn9')dnl
DAEMON_OPTIONS(`Family=inet, Name={daemon_name}, Port={port}, Addr=127.0.0.1')dnl
dnl ---- config/sendmail/smtp-policy.mc as shipped (milter port replaced) ----
{milter}
dnl ---- end of the shipped snippet ----
{extra}
MAILER(`local')dnl
MAILER(`smtp')dnl
"""


class PrivateSendmail(MailLab):
    """One private Sendmail on 127.0.0.1, built in a temp dir and removed with it.

    Args:
        downstream_port: where every non-local domain is relayed (a ``ScriptedServer.port``).
        milter_port: the milter (``inet:PORT@127.0.0.1``), wired in through the shipped
            smtp-policy.mc; None for no milter.
        delivery_mode: ``background`` (deliver at once) or ``queueonly``.
        mc_extra: more .mc lines, after the shipped snippet.
        keep: leave the temp dir behind (its path is printed).
    """

    def __init__(
        self,
        *,
        downstream_port: int,
        milter_port: int | None = None,
        delivery_mode: str = "background",
        mc_extra: Sequence[str] = (),
        keep: bool = False,
    ) -> None:
        self.downstream_port = downstream_port
        self.milter_port = milter_port
        self.delivery_mode = delivery_mode
        self.mc_extra = tuple(mc_extra)
        self.keep = keep or bool(os.environ.get("KEEP_SENDMAIL"))
        self.namespaced = namespaces_permitted()
        #: Why this instance runs without the namespace wrapper (None when it has it).
        self.degraded: str | None = None if self.namespaced else FALLBACK
        self.startup_seconds: float | None = None
        self._root: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sink: SyslogSink | None = None

    # -- paths -----------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The instance's temp dir."""
        if self._root is None:
            raise RuntimeError("PrivateSendmail not started")
        return self._root

    @property
    def binary(self) -> Path:
        """The unpacked sendmail binary (absolute: Sendmail wants its full path)."""
        return self.root / "root" / BINARY

    @property
    def cf(self) -> Path:
        """The compiled sendmail.cf."""
        return self.root / "etc" / "sendmail.cf"

    @property
    def queue_dir(self) -> Path:
        """QueueDirectory."""
        return self.root / "queue"

    @property
    def mail_dir(self) -> Path:
        """Local mailboxes: ``mail/<user>/*.eml``."""
        return self.root / "mail"

    @property
    def maillog(self) -> Path:
        """The log: what Sendmail sent to syslog, as syslog file lines."""
        return self.root / "log" / "maillog"

    @property
    def wrapper(self) -> Path:
        """What every sendmail command runs in: ``bin/smns``, or ``bin/smlab`` (fallback)."""
        return self.root / "bin" / ("smns" if self.namespaced else "smlab")

    @property
    def smtp_port(self) -> int:
        """The SMTP listener on 127.0.0.1."""
        if self._port is None:
            raise RuntimeError("PrivateSendmail not started")
        return self._port

    @property
    def pid(self) -> int | None:
        """The daemon's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # -- building --------------------------------------------------------------------------

    def _make_tree(self) -> None:
        user = ensure_user()
        self._root = root = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        root.chmod(0o755)  # the RunAsUser must traverse it (mkdtemp gives 0700)
        for name in ("root", "etc", "bin", "log", "run", "run/hostdev"):
            (root / name).mkdir(mode=0o755)
        for name, mode in (("queue", 0o700), ("mail", 0o755)):
            (root / name).mkdir(mode=mode)
            os.chown(root / name, user.pw_uid, user.pw_gid)
        stats = root / "run" / "statistics"  # kept only if it exists
        stats.touch()
        os.chown(stats, user.pw_uid, user.pw_gid)
        for deb in ensure_debs():
            _run("dpkg", "-x", deb, root / "root")
        self._write_support_files()
        if not self.namespaced:
            self._build_preload()

    def _build_preload(self) -> None:
        """The fallback: compile bin/smlab.so; clear the binary's setgid bit (TRAP: set-id
        programs ignore LD_PRELOAD)."""
        bin_dir = self.root / "bin"
        source = _SMLAB_C
        for name, value in (
            ("@HOSTNAME@", HOSTNAME),
            ("@HOSTS@", str(self.root / "etc" / "hosts")),
            ("@LOG@", str(self.root / "run" / "log.sock")),
        ):
            source = source.replace(name, value)
        (bin_dir / "smlab.c").write_text(source)
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise SendmailError(f"{FALLBACK}, and there is no C compiler (cc) to build it")
        _run(compiler, "-shared", "-fPIC", "-O2", "-o", bin_dir / "smlab.so", bin_dir / "smlab.c")
        self.binary.chmod(0o755)

    def _write_support_files(self) -> None:
        root, etc = self.root, self.root / "etc"
        short = HOSTNAME.partition(".")[0]
        (etc / "hosts").write_text(f"127.0.0.1\t{HOSTNAME} {short} localhost\n")
        nsswitch = Path("/etc/nsswitch.conf")
        lines = nsswitch.read_text().splitlines() if nsswitch.exists() else []
        lines = [ln for ln in lines if not ln.startswith("hosts:")] + ["hosts: files"]
        (etc / "nsswitch.conf").write_text("\n".join(lines) + "\n")
        (etc / "service.switch").write_text("hosts files\naliases files\n")
        (etc / "aliases").write_text(
            f"postmaster: {USER}\nMAILER-DAEMON: postmaster\nroot: {USER}\n"
        )
        (etc / "helpfile").write_text("smtp_policy test instance\n")
        for name, template in (("smns", _SMNS), ("smlab", _SMLAB), ("deliver", _DELIVER)):
            script = root / "bin" / name
            script.write_text(
                template.format(
                    hostname=HOSTNAME,
                    devices=" ".join(DEVICES),
                    lab=root,
                    mail=self.mail_dir,
                    user=USER,
                )
            )
            script.chmod(0o755)

    def _write_cf(self) -> None:
        milter = shipped_mc(self.milter_port) if self.milter_port is not None else "dnl no milter"
        mc = _MC.format(
            root=self.root / "root",
            lab=self.root,
            hostname=HOSTNAME,
            user=USER,
            delivery_mode=self.delivery_mode,
            downstream_port=self.downstream_port,
            daemon_name=DAEMON_NAME,
            port=self.smtp_port,
            milter=milter.rstrip("\n"),
            extra="\n".join(self.mc_extra),
        )
        (self.root / "etc" / "sendmail.mc").write_text(mc)
        m4 = shutil.which("m4") or str(self.root / "root" / "usr" / "bin" / "m4")
        self.cf.write_text(_run(m4, self.root / "etc" / "sendmail.mc"))
        self._check_cf()

    def _check_cf(self) -> None:
        """TRAP: m4 ignores misspelt names; check what the .cf really says."""
        cf = self.cf.read_text()
        wanted = [
            f"O QueueDirectory={self.queue_dir}",
            f"O PidFile={self.root}/run/sendmail.pid",
            f"O RunAsUser={USER}:{USER}",
            f"O DaemonPortOptions=Family=inet, Name={DAEMON_NAME}, Port={self.smtp_port}, "
            "Addr=127.0.0.1",
        ]
        if self.milter_port is not None:
            wanted.append(f"Xsmtp_policy, S=inet:{self.milter_port}@127.0.0.1, T=")
        missing = [w for w in wanted if w not in cf]
        if missing:
            raise SendmailError(f"{self.cf} lacks {missing}")
        if re.search(r"^X.*\bF=", cf, re.MULTILINE):
            raise SendmailError("the milter line has an F= flag: it would not fail open")

    def command(self, *args: str) -> list[str]:
        """The argv that runs the lab's sendmail binary with ``args`` (in its wrapper)."""
        return [str(self.wrapper), str(self.binary), "-C", str(self.cf), *args]

    def sendmail(self, *args: str, timeout: float = 120) -> str:
        """Run the binary once in the foreground (``-bi``, ``-qI<qid>``...); its stdout."""
        return _run(*self.command(*args), timeout=timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Build the instance and start the daemon; return once it greets on its port.

        Raises:
            SendmailError: it did not start; the message holds its output and the log tail.
        """
        if self._proc is not None:
            return self
        started = time.monotonic()
        try:
            self._make_tree()
            self._sink = SyslogSink(self.root / "run" / "log.sock", self.maillog).start()
            for attempt in range(3):
                # a port probed free can be taken before Sendmail binds it: then another
                # server greets there, and the next try takes another port
                self._port = free_port()
                self._write_cf()
                if attempt == 0:
                    self.sendmail("-O", "RunAsUser=root", "-bi", timeout=timeout)
                    os.chown(self.root / "etc" / "aliases.db", 0, pwd.getpwnam(USER).pw_gid)
                self._spawn()
                greeting = poll(self._greeting, timeout, lambda: f"a 220 on {self.smtp_port}")
                if greeting.startswith(f"220 {HOSTNAME} "):
                    break
                self._kill_daemon()
            else:
                raise SendmailError(self._explain(f"3 tries, last greeting: {greeting!r}"))
            self.startup_seconds = time.monotonic() - started
        except BaseException as exc:
            timed_out = isinstance(exc, WaitTimeoutError) and self._root is not None
            detail = self._explain(f"Sendmail did not start: {exc}") if timed_out else ""
            with contextlib.suppress(Exception):
                self.stop()
            if detail:
                raise SendmailError(detail) from exc
            raise
        return self

    def _spawn(self) -> None:
        """Start ``sendmail -bD`` (foreground daemon) in its own session."""
        with (self.root / "log" / "sendmail.stdout").open("ab") as out:
            self._proc = subprocess.Popen(
                self.command("-bD"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _kill_daemon(self, timeout: float = 30.0) -> str:
        """SIGTERM the daemon (SIGKILL after ``timeout``); what went wrong, or ""."""
        if self._proc is None:
            return ""
        problem = ""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            problem = f"sendmail {self._proc.pid} ignored SIGTERM for {timeout:g}s\n"
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        return problem

    def _greeting(self) -> str | None:
        if self._proc is not None and self._proc.poll() is not None:
            raise SendmailError(self._explain(f"sendmail -bD exited {self._proc.returncode}"))
        try:
            with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=5) as s:
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

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the daemon, wait until none of its processes is left and nothing listens on
        its port, stop the sink and remove the temp dir. Safe to call twice.

        Raises:
            SendmailError: processes survived (they are killed) or the port still listens.
        """
        if self._root is None:
            return
        problem = self._kill_daemon(timeout)
        try:
            poll(lambda: True if not self.processes() else None, timeout, self._describe)
        except WaitTimeoutError as exc:
            problem += f"{exc}\n"
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._port is not None and self._listening():
            problem += f"something still listens on 127.0.0.1:{self._port}\n"
        if self._sink is not None:
            self._sink.stop()
        root, self._root, self._proc, self._sink = self._root, None, None, None
        if self.keep:
            print(f"KEEP_SENDMAIL: private Sendmail kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        if problem:
            raise SendmailError(problem)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=2):
                return True
        except OSError:
            return False

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
        """PIDs of live processes running the lab's binary or a program in its bin/."""
        prefix = f"{self.root}/"
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                exe = os.readlink(proc / "exe")
                argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if exe.startswith(prefix) or argv.startswith(prefix) or f" {prefix}" in argv:
                found.append(int(proc.name))
        return found

    def _describe(self) -> str:
        return f"no processes of {self.root} (left: {self.processes()})"

    # -- observation -----------------------------------------------------------------------

    def mailbox(self, user: str = USER) -> list[EmailMessage]:
        """The messages delivered to local ``user``, oldest first."""
        folder = self.mail_dir / user
        files = sorted(folder.glob("*.eml")) if folder.is_dir() else []
        return [
            message_from_bytes(f.read_bytes(), _class=EmailMessage, policy=email.policy.default)
            for f in files
        ]

    def queue_files(self) -> list[Path]:
        """Files in the queue directory (``qf``/``df`` pairs, transcripts)."""
        return sorted(f for f in self.queue_dir.iterdir() if f.is_file())

    def run_queue(self, queue_id: str | None = None) -> None:
        """One queue run in the foreground (``-q``, or ``-qI<queue_id>`` for one message)."""
        self.sendmail("-qI" + queue_id if queue_id else "-q")

    def _explain(self, what: str) -> str:
        out = self.root / "log" / "sendmail.stdout"
        stdout = out.read_text(errors="replace") if out.exists() else ""
        return f"{what}\n--- sendmail stdout ---\n{stdout}{self._tail()}"


class SendmailFactory:
    """``factory(**options)`` starts a :class:`PrivateSendmail`; ``close()`` stops them all."""

    def __init__(self) -> None:
        self.instances: list[PrivateSendmail] = []

    def __call__(self, **options: Any) -> PrivateSendmail:
        """Start an instance with ``PrivateSendmail(**options)``."""
        instance = PrivateSendmail(**options)
        self.instances.append(instance)
        return instance.start()

    def close(self) -> None:
        """Stop every instance; one AssertionError naming every problem.

        Raises:
            AssertionError: an instance did not stop cleanly.
        """
        problems = []
        for instance in self.instances:
            try:
                instance.stop()
            except SendmailError as exc:
                problems.append(str(exc))
        self.instances.clear()
        if problems:
            raise AssertionError("\n".join(problems))
