"""A no-op pymilter: the baseline that smtp_policy's milter is compared with.

Every callback is negotiated (connect, HELO, MAIL, RCPT, DATA, headers, end of headers, body,
end of message) and answers CONTINUE, with no macros requested and no events written: what any
pymilter costs before it does anything. It counts end-of-message calls and, once libmilter
has stopped (SIGTERM), writes ``{"eom": N, "maxrss_kb": ...}`` to ``--stats``.

    .venv/bin/python benchmarks/noop_milter.py --socket inet:8894@127.0.0.1 --stats FILE
"""

from __future__ import annotations

import argparse
import json
import resource
import threading

import Milter

CONTINUE: int = Milter.CONTINUE


class _Counter:
    """End-of-message calls, counted across libmilter's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.eom = 0


COUNT = _Counter()


class NoopMilter(Milter.Base):  # type: ignore[misc]  # pymilter ships no type information
    """Overrides every callback, so every step is negotiated and answered."""

    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        return CONTINUE

    def hello(self, hostname: str) -> int:
        return CONTINUE

    def envfrom(self, sender: str, *args: str) -> int:
        return CONTINUE

    def envrcpt(self, recipient: str, *args: str) -> int:
        return CONTINUE

    def data(self) -> int:
        return CONTINUE

    def header(self, name: str, value: str) -> int:
        return CONTINUE

    def eoh(self) -> int:
        return CONTINUE

    def body(self, chunk: bytes) -> int:
        return CONTINUE

    def eom(self) -> int:
        with COUNT.lock:
            COUNT.eom += 1
        return CONTINUE

    def abort(self) -> int:
        return CONTINUE

    def close(self) -> int:
        return CONTINUE


def main() -> None:
    """Run until libmilter stops on SIGTERM, then write the stats."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="inet:PORT@HOST or unix:/path")
    parser.add_argument("--stats", help="write the end-of-message count here when stopped")
    args = parser.parse_args()
    Milter.factory = NoopMilter
    Milter.set_exception_policy(Milter.CONTINUE)
    Milter.runmilter("noop", args.socket, 600, rmsock=True)
    if args.stats:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(args.stats, "w", encoding="utf-8") as fh:
            json.dump({"eom": COUNT.eom, "maxrss_kb": usage.ru_maxrss}, fh)


if __name__ == "__main__":
    main()
