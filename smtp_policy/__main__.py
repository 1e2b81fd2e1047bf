"""``python -m smtp_policy`` is ``smtp-policy``."""

import sys

from smtp_policy.cli import main

sys.exit(main())
