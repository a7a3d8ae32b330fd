"""Print how long `import aot_core` takes in a fresh interpreter (median of 5 runs).

Run: python benchmarks/import_time.py   (with aot-core installed or on PYTHONPATH)
"""

from __future__ import annotations

import statistics
import subprocess
import sys

CODE = "import time; t = time.perf_counter(); import aot_core; print(time.perf_counter() - t)"


def main() -> None:
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", CODE], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(5)
    ]
    print(
        f"import aot_core: median {statistics.median(runs) * 1000:.1f} ms "
        f"(min {min(runs) * 1000:.1f}, max {max(runs) * 1000:.1f}, 5 fresh processes)"
    )


if __name__ == "__main__":
    main()
