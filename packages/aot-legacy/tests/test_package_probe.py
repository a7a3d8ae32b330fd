"""A package whose loading fails or crashes is refused via a child process, never loaded
into the user's process (fast: no compile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aot_core import ArtifactIncompatibleError
from aot_legacy.packages import FILES, probe_load


def test_unloadable_package_is_refused_and_remembered(tmp_path: Path) -> None:
    for name in FILES:
        (tmp_path / name).write_bytes(b"not a zip archive")
    env = {"torch": "test"}
    with pytest.raises(ArtifactIncompatibleError, match="probe process failed"):
        probe_load(tmp_path, environment=env, device_index=-1)
    (record,) = tmp_path.glob("probe-*.json")
    verdict = json.loads(record.read_text())
    assert verdict["ok"] is False and verdict["detail"]
    # The verdict is reused: no second child process, same refusal.
    verdict["detail"] = "remembered"
    record.write_text(json.dumps(verdict))
    with pytest.raises(ArtifactIncompatibleError, match="remembered"):
        probe_load(tmp_path, environment=env, device_index=-1)
