"""``python -m aot_core``: the ``aot`` command (for environments without its script on PATH)."""

import sys

from aot_core.cli.app import main

sys.exit(main())
