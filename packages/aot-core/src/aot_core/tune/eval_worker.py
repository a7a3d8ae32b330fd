"""One ``aot eval`` job in a fresh process, for ``aot tune``: ``python -m
aot_core.tune.eval_worker AOT-ARGS...`` runs ``aot AOT-ARGS`` (an ``eval`` with ``--output``)
and then prints the job's ``aot`` section as its result line
(``aot_core.bench.fresh_process.print_result``), so ``run_fresh`` reads it as it reads a bench
worker's."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run the job; print its result line when it succeeded."""
    from aot_core.bench.fresh_process import print_result
    from aot_core.cli.app import main as aot_main

    code = aot_main(argv)
    if code != 0:
        return code
    output = Path(argv[argv.index("--output") + 1])
    results = json.loads((output / "results.json").read_text(encoding="utf-8"))
    # ru_maxrss is in KiB on Linux; children counts the engine processes that were waited for.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scores = {
        task: {k: v for k, v in metrics.items() if "," in k and "_stderr" not in k}
        for task, metrics in results.get("results", {}).items()
    }
    print_result({"aot": results["aot"], "scores": scores, "peak_rss_bytes": rss * 1024})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
