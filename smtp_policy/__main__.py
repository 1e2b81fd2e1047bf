"""``python -m smtp_policy`` is ``smtp-policy``."""

import sys

from .cli import main

sys.exit(main())
