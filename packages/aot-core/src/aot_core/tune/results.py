"""Trial results, one JSON line each, appended the moment a trial finishes.

A sweep that is interrupted (Ctrl-C, a killed terminal, a crash) keeps every finished
trial: the next ``aot tune`` with the same model, workload and versions reads them back by
key and runs only the rest. A line cut short by a kill is skipped, never trusted; a trial
that failed is recorded but run again next time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_NAME = "trials.jsonl"
"""The results file in a sweep's work directory."""


@dataclass(frozen=True, kw_only=True)
class TrialResults:
    """The append-only results file of one sweep."""

    path: Path
    """The JSONL file."""

    def load(self) -> dict[str, dict[str, Any]]:
        """Every finished (ok) trial by key; the latest line wins."""
        if not self.path.is_file():
            return {}
        out: dict[str, dict[str, Any]] = {}
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the torn last line of an interrupted write
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                if record.get("ok"):
                    out[record["key"]] = record
                else:
                    out.pop(record["key"], None)
        return out

    def append(self, record: Mapping[str, Any]) -> None:
        """Add one trial's record and make it durable before the next trial starts."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(dict(record), sort_keys=True) + "\n"
        if _ends_torn(self.path):
            line = "\n" + line  # a killed write left half a line: keep it apart from this one
        # One write of one line in append mode: a concurrent reader sees whole lines.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _ends_torn(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False
