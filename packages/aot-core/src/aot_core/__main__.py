"""``python -m aot_core``: the ``aot`` command (for environments without its script on PATH)."""

import sys

from aot_core.cli import main

sys.exit(main())
