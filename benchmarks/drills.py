"""The failure drills of issue 7 at full size: pytest on tests/integration/test_drill_*.py and
the Sendmail kill drill with SMTP_POLICY_DRILLS=full (see tests/integration/drills.py), so the
"drill results" section at the end has the full-size numbers. Needs root, Postfix and
Sendmail's .debs (scripts/install-deps).
Arguments are passed on to pytest; the exit status is pytest's.

    .venv/bin/python benchmarks/drills.py            # every drill
    .venv/bin/python benchmarks/drills.py -k load -x
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the tests' modules importable
    sys.path.insert(0, str(ROOT))
from tests.integration.drills import SCALE_ENV  # noqa: E402

#: Drills that live beside the tests of their subject: the Sendmail kill drill (issue 6).
EXTRA = ["tests/integration/test_sendmail.py::test_milter_killed_under_load_loses_no_mail"]


def main() -> int:
    """Run the drills; return pytest's exit status."""
    drills = sorted(
        str(p.relative_to(ROOT)) for p in ROOT.glob("tests/integration/test_drill_*.py")
    )
    drills += EXTRA
    if not drills:
        print("no tests/integration/test_drill_*.py found", file=sys.stderr)
        return 1
    env = {**os.environ, SCALE_ENV: "full", "REQUIRE_POSTFIX": "1", "REQUIRE_SENDMAIL": "1"}
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *drills, *sys.argv[1:]]
    return subprocess.call(argv, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
