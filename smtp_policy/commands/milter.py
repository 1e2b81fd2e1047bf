"""Run the milter: one JSON event per SMTP stage, Postfix's own rejected recipients explained,
and friendly multi-line replies for the policy rules in --config. It always fails open.

Wire it into Postfix's main.cf with a fail-open default, for example:
  smtpd_milters = { unix:smtp-policy/milter.sock, default_action=accept,
                    connect_timeout=5s, command_timeout=10s, content_timeout=60s }
(a unix: path is relative to /var/spool/postfix when smtpd runs chrooted), or over TCP with
  smtpd_milters = { inet:127.0.0.1:8895, default_action=accept, ... }
and --listen inet:127.0.0.1:8895. Options override the configuration ([milter] listen and
timeout, [events] output, [[rules]], [texts]: see config/config.toml). SIGTERM stops it
cleanly; SIGHUP re-reads the configuration and keeps the running one if the new one is bad.
The engine ([milter] engine, --engine) is our own milter protocol code on asyncio (uvloop when
installed), or libmilter's C threads under pymilter as before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from smtp_policy.commands._options import add_config_option
from smtp_policy.config.listen import ListenAddress
from smtp_policy.config.model import MILTER_EVENT_MODES
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.events import Event, EventKind, Source
from smtp_policy.emit import EventWriter

if TYPE_CHECKING:
    from smtp_policy.adapters.milter import MilterFactory, MilterSettings
    from smtp_policy.config import Config

ENGINES = ("asyncio", "libmilter")
HELP = "run the milter (record every SMTP stage, explain rejections, apply policy replies)"

STOP_GRACE = 10.0  # seconds open sessions get to finish after SIGTERM
LISTEN_BACKLOG = 128  # connections the kernel queues before the engine accepts them
NAME = "smtp-policy"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the milter options."""
    parser.add_argument(
        "--listen",
        metavar="ADDRESS",
        help="inet:HOST:PORT, inet:[IPv6]:PORT or unix:/path "
        "(default: [milter] listen, unix:/var/spool/postfix/smtp-policy/milter.sock)",
    )
    parser.add_argument(
        "--events", metavar="FILE", help="append JSON events to FILE (default: [events] output)"
    )
    add_config_option(parser)
    parser.add_argument(
        "--timeout",
        type=int,
        metavar="SECONDS",
        help="drop an MTA connection silent this long (default: [milter] timeout, 600)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        help="asyncio: our own milter protocol code (uvloop when installed); libmilter: "
        "Sendmail's C library under pymilter (default: [milter] engine, asyncio)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="asyncio engine: N processes share the listening socket (default 1; more use "
        "more cores, each with its own memory)",
    )
    parser.add_argument(
        "--events-mode",
        choices=MILTER_EVENT_MODES,
        help="stages: an event per SMTP stage and a session summary; session: only the "
        "session event, carrying every transaction's stage outcomes (less CPU per message); "
        "both. Policy decisions and errors are written at once in every mode (default: "
        "[milter] events, stages)",
    )
    parser.add_argument(
        "--noreply",
        choices=("auto", "on", "off"),
        default="auto",
        help="let the MTA skip waiting for stages no rule replies on: on, off, or auto "
        "(auto: on with the asyncio engine over a unix socket; off over TCP, where it costs "
        "a delayed-ACK stall, and with libmilter, which drops the steps the MTA did not wait "
        "for when the client quits right after them)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; exit 1 if the socket cannot be opened."""
    from smtp_policy.commands._serve import warning_printer
    from smtp_policy.config import load_config

    config = load_config(args.config, on_warning=warning_printer("milter"))
    address = ListenAddress.parse(args.listen or config.milter.listen)
    output = args.events or config.events.output
    try:
        events = EventWriter.open(output)
    except OSError as exc:
        raise ConfigError([f"cannot write events to {output}: {exc.strerror or exc}"]) from None
    engine = args.engine or config.milter.engine
    timeout = args.timeout or config.milter.timeout
    try:
        settings = _settings(config, events, _noreply(args.noreply, engine, address))
        settings = replace(settings, event_mode=args.events_mode or config.milter.events)
        if engine == "libmilter":
            return _serve(args, address, timeout, settings)
        return _serve_asyncio(args, address, timeout, settings)
    finally:
        events.close()


def _noreply(choice: str, engine: str, address: ListenAddress) -> bool:
    """``auto``: on with our engine over a unix socket, else off. On a unix socket a client
    that quits right after a step the MTA did not wait for makes Postfix send it, ABORT and
    QUIT and close at once; libmilter's poll sees POLLHUP and drops the unread commands, so
    that step's event is lost (a rejected RCPT, a HELO, the connect); our engine reads every
    command first. Over TCP it costs a delayed-ACK stall."""
    if choice == "auto":
        return engine == "asyncio" and address.is_unix
    return choice == "on"


def _settings(config: Config, events: EventWriter, noreply: bool) -> MilterSettings:
    from smtp_policy.adapters.milter import MilterSettings, policy_from_rules
    from smtp_policy.data import default_knowledge

    return MilterSettings(
        events,
        default_knowledge(),
        policy_from_rules(config.rules),
        config.texts,
        noreply,
    )


def _serve(
    args: argparse.Namespace, address: ListenAddress, timeout: int, settings: MilterSettings
) -> int:
    import Milter

    from smtp_policy.adapters.milter import MilterFactory

    events = settings.events
    factory = MilterFactory(settings)
    Milter.factory = factory  # set once; a reload swaps the factory's settings
    Milter.set_exception_policy(Milter.CONTINUE)  # backstop: our callbacks catch everything
    sys.excepthook = _excepthook(events)  # pymilter prints C-level errors through it
    if address.is_unix:
        _remove_stale_socket(address.path)
    failure: list[BaseException] = []
    worker = threading.Thread(
        target=_libmilter_main,
        args=(address.libmilter(), timeout, failure),
        name="libmilter",
        daemon=True,
    )
    flags = _Flags()
    flags.install()
    old_umask = os.umask(0o111) if address.is_unix else None  # postfix must connect
    try:
        worker.start()
        _wait_listening(address, worker)
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    if not worker.is_alive():
        raise ConfigError([f"cannot listen on {address}: {_describe(failure)}"])
    _started(events, address, settings, args.config, engine="libmilter")
    print(f"smtp-policy milter: listening on {address}", file=sys.stderr, flush=True)
    _loop(args, flags, worker, factory)
    return _shutdown(address, worker, factory, failure)


def _serve_asyncio(
    args: argparse.Namespace, address: ListenAddress, timeout: int, settings: MilterSettings
) -> int:
    """Serve with our own engine (:mod:`smtp_policy.adapters._milter_engine`): ``--workers``
    processes share one listening socket (the first one is this process)."""
    sock = _listening_socket(address)
    workers: list[int] = []
    for _ in range(max(1, args.workers) - 1):
        pid = os.fork()
        if pid == 0:  # a worker: serve until the parent says stop, die with the parent
            _die_with_parent()
            code = 1
            try:
                code = _run_loop(args, address, sock, timeout, settings, worker=True)
            finally:
                os._exit(code)
        workers.append(pid)
    try:
        return _run_loop(args, address, sock, timeout, settings, workers=workers)
    finally:
        _stop_workers(workers)


def _run_loop(
    args: argparse.Namespace,
    address: ListenAddress,
    sock: socket.socket,
    timeout: int,
    settings: MilterSettings,
    *,
    worker: bool = False,
    workers: Sequence[int] = (),
) -> int:
    """One process's event loop: uvloop when installed, else asyncio's own."""
    serve = functools.partial(
        _main_asyncio, args, address, sock, timeout, settings, worker=worker, workers=workers
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(event_loop="asyncio"))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(event_loop="uvloop"))


def _listening_socket(address: ListenAddress) -> socket.socket:
    """The listening socket (a stale unix socket replaced, a live one refused)."""
    try:
        if address.is_unix:
            _remove_stale_socket(address.path)
            sock = socket.socket(socket.AF_UNIX)
            old_umask = os.umask(0o111)  # postfix must connect
            try:
                sock.bind(address.path)
            finally:
                os.umask(old_umask)
        else:
            host, port = address.host_port
            family = socket.AF_INET6 if address.kind == "inet6" or ":" in host else socket.AF_INET
            sock = socket.socket(family)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        raise ConfigError([f"cannot listen on {address}: {exc.strerror or exc}"]) from None
    sock.setblocking(False)
    return sock


def _die_with_parent() -> None:
    """Ask the kernel for SIGKILL when the parent dies (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):  # not Linux: the worker notices the parent's stop
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the request
        os._exit(0)


def _stop_workers(workers: Sequence[int]) -> None:
    """SIGTERM each worker and wait for it (SIGKILL after the grace time)."""
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE + 2
    for pid in workers:
        while time.monotonic() < deadline:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


async def _main_asyncio(
    args: argparse.Namespace,
    address: ListenAddress,
    sock: socket.socket,
    timeout: int,
    settings: MilterSettings,
    *,
    event_loop: str,
    worker: bool,
    workers: Sequence[int],
) -> int:
    import Milter

    from smtp_policy.adapters._milter_engine import MilterServer
    from smtp_policy.adapters.milter import MilterFactory

    events = settings.events
    factory = MilterFactory(settings)
    Milter.factory = factory  # set once; a reload swaps the factory's settings

    def protocol_error(text: str) -> None:
        _emit(events, EventKind.ERROR, text=text)

    def reload() -> None:
        for pid in workers:  # each worker reloads itself
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        _reload(args.config, factory, args.events_mode)

    server = MilterServer(
        timeout=timeout,
        on_error=_engine_error(events),
        on_protocol_error=protocol_error,
        hold_events=events.hold,
        release_events=events.release,
    )
    listener = await server.listen(sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_error(events))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    if not worker:
        _started(
            events,
            address,
            settings,
            args.config,
            engine="asyncio",
            event_loop=event_loop,
            workers=1 + len(workers),
        )
        print(f"smtp-policy milter: listening on {address}", file=sys.stderr, flush=True)
    await stop.wait()
    listener.close()
    deadline = time.monotonic() + STOP_GRACE
    while factory.active > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    open_sessions = factory.active
    server.abort_all()
    await asyncio.sleep(0)  # let the dropped connections end their sessions
    if not worker:
        if address.is_unix:
            with contextlib.suppress(OSError):
                os.unlink(address.path)
        _emit(events, EventKind.STOPPED, open_sessions=open_sessions)
    return 0


def _loop_error(
    events: EventWriter,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """The event loop's own errors: one line on stderr and one error event, no traceback."""

    def handle(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "event loop error")
        if (exc := context.get("exception")) is not None:
            message = f"{message}: {type(exc).__name__}: {exc}"
        last_line = " ".join(message.split())
        print(f"smtp-policy milter: {last_line}", file=sys.stderr, flush=True)
        _emit(events, EventKind.ERROR, text=last_line)

    return handle


def _engine_error(events: EventWriter) -> Callable[[BaseException, object], None]:
    """An exception our callbacks did not catch: an error event in its session if known."""
    from smtp_policy.adapters.milter import PolicyMilter, report_uncaught

    def report(exc: BaseException, milter: object) -> None:
        if isinstance(milter, PolicyMilter):
            milter.failed("engine", exc)
        else:
            report_uncaught(exc, events)

    return report


def _libmilter_main(conn: str, timeout: int, failure: list[BaseException]) -> None:
    """libmilter's accept loop; it returns after ``Milter.stop()`` (runs in its own thread).

    libmilter blocks SIGHUP/SIGTERM/SIGINT in this thread and its children, so the signals
    reach the main thread, which handles them.
    """
    import Milter

    try:
        Milter.runmilter(NAME, conn, timeout, rmsock=False)
    except BaseException as exc:  # reported by the main thread
        failure.append(exc)


class _Flags:
    """Signals turned into flags the main loop polls."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload.set()


def _loop(
    args: argparse.Namespace, flags: _Flags, worker: threading.Thread, factory: MilterFactory
) -> None:
    """Wait for a signal (or for libmilter to end by itself)."""
    while worker.is_alive() and not flags.stop.wait(0.2):
        if flags.reload.is_set():
            flags.reload.clear()
            _reload(args.config, factory, args.events_mode)


def _reload(path: str | None, factory: MilterFactory, events_mode: str | None = None) -> None:
    """Re-read the configuration; keep the running one if the new one is bad. ``events_mode``
    (``--events-mode``) wins over ``[milter] events``."""
    from smtp_policy.adapters.milter import policy_from_rules
    from smtp_policy.config import load_config

    events = factory.settings.events
    events.reopen(Source.MILTER)
    try:
        config = load_config(path)
    except Exception as exc:
        text = f"reload failed, keeping the running configuration: {exc}"
        _emit(events, EventKind.ERROR, text=" ".join(text.split()), exception=type(exc).__name__)
        return
    policy = policy_from_rules(config.rules)
    mode = events_mode or config.milter.events
    factory.replace(replace(factory.settings, policy=policy, texts=config.texts, event_mode=mode))
    _emit(events, EventKind.RELOADED, config=path, rules=len(config.rules), events_mode=mode)


def _shutdown(
    address: ListenAddress,
    worker: threading.Thread,
    factory: MilterFactory,
    failure: list[BaseException],
) -> int:
    """Stop accepting, give open sessions a moment, record the stop."""
    if worker.is_alive():
        _stop_libmilter(address)
        worker.join(STOP_GRACE)
    deadline = time.monotonic() + STOP_GRACE
    while factory.active > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    events = factory.settings.events
    if failure:
        _emit(events, EventKind.ERROR, text=f"libmilter stopped: {_describe(failure)}")
        print(f"smtp-policy milter: libmilter stopped: {_describe(failure)}", file=sys.stderr)
        return 1
    _emit(events, EventKind.STOPPED, open_sessions=factory.active)
    return 0


def _stop_libmilter(address: ListenAddress) -> None:
    """``Milter.stop()``; it waits for the accept loop's 5 s poll unless a connection wakes it."""
    import Milter

    stopper = threading.Thread(target=Milter.stop, name="libmilter-stop", daemon=True)
    stopper.start()
    deadline = time.monotonic() + STOP_GRACE
    while stopper.is_alive() and time.monotonic() < deadline:
        stopper.join(0.05)
        _listening(address)


def _wait_listening(address: ListenAddress, worker: threading.Thread, timeout: float = 10) -> None:
    """Return once the socket accepts connections (or libmilter gave up)."""
    deadline = time.monotonic() + timeout
    while worker.is_alive() and time.monotonic() < deadline:
        if _listening(address):
            return
        time.sleep(0.02)


def _listening(address: ListenAddress) -> bool:
    """Whether something accepts connections on ``address`` (we connect and hang up)."""
    target: str | tuple[str, int] = address.path if address.is_unix else address.host_port
    family = {"unix": socket.AF_UNIX, "inet6": socket.AF_INET6}.get(address.kind, socket.AF_INET)
    with socket.socket(family) as probe:
        probe.settimeout(1)
        try:
            probe.connect(target)
        except OSError:
            return False
    return True


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a non-socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError([f"cannot listen on unix:{path}: the file exists and is no socket"])
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: its milter is gone
            return
    raise ConfigError([f"cannot listen on unix:{path}: another process is listening there"])


def _describe(failure: list[BaseException]) -> str:
    if not failure:
        return "libmilter ended"
    exc = failure[0]
    return f"{type(exc).__name__}: {exc}"


def _emit(events: EventWriter, name: EventKind, text: str | None = None, **extra: object) -> None:
    events.emit(
        Event(event=name, source=Source.MILTER, ts=datetime.now(UTC), text=text, extra=extra)
    )


def _started(
    events: EventWriter,
    address: ListenAddress,
    settings: MilterSettings,
    config: str | None,
    **engine: object,
) -> None:
    """The ``started`` event, either engine: where it listens, what it negotiates and writes,
    then the engine's own fields."""
    _emit(
        events,
        EventKind.STARTED,
        None,
        listen=address.libmilter(),
        noreply=settings.noreply,
        events_mode=settings.event_mode,
        config=config,
        **engine,
    )


def _excepthook(
    events: EventWriter,
) -> Callable[[type[BaseException], BaseException, TracebackType | None], None]:
    """Report exceptions raised where we cannot catch them (pymilter's C layer) as events."""
    from smtp_policy.adapters.milter import report_uncaught

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        report_uncaught(exc, events)

    return hook
