"""Sizes of the failure drills (issue 7): small in ``.ci/run``, full in ``benchmarks/drills``.

``SMTP_POLICY_DRILLS=full`` (set by ``benchmarks/drills``) selects the full counts; anything
else, or nothing, the CI counts. A drill reads its numbers through :func:`size` so both runs
exercise the same code.
"""

from __future__ import annotations

import os

#: The environment variable that selects the full-size drills.
SCALE_ENV = "SMTP_POLICY_DRILLS"


def full_size() -> bool:
    """True when the drills run at their full, documented size."""
    return os.environ.get(SCALE_ENV, "").strip().lower() == "full"


def size(ci: int, full: int) -> int:
    """``full`` under ``SMTP_POLICY_DRILLS=full``, else ``ci``."""
    return full if full_size() else ci
