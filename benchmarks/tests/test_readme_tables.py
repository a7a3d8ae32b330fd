"""The README's measured tables are rendered from archived data and cannot drift from it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("readme_tables", HERE.parent / "readme_tables.py")
assert _spec is not None and _spec.loader is not None
readme_tables = importlib.util.module_from_spec(_spec)
sys.modules["readme_tables"] = readme_tables
_spec.loader.exec_module(readme_tables)


def test_every_table_is_in_the_readme_and_matches_its_data() -> None:
    text = readme_tables.README.read_text(encoding="utf-8")
    for name in readme_tables.TABLES:
        assert f"<!-- table {name}:" in text, f"README does not show table {name}"
    assert readme_tables.main(["--check"]) == 0


def test_every_caption_names_command_commit_and_cpu_flags() -> None:
    for name, table in readme_tables.TABLES.items():
        head = readme_tables.render_table(name).splitlines()[0]
        provenance = json.loads((readme_tables.RUNS / table.run / "provenance.json").read_text())
        assert provenance["commit"] in head and "CPU flags:" in head, name
        assert provenance["command"] in head, name


def test_a_number_edited_by_hand_fails_the_check(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    text = readme_tables.README.read_text(encoding="utf-8")
    body = readme_tables.render_table("scaling")
    row = next(line for line in body.splitlines() if line.startswith("| tiny | vllm"))
    assert row in text
    readme.write_text(text.replace(row, row.replace("| tiny | vllm | ", "| tiny | vllm | 1")))
    assert readme_tables.main(["--check", "--readme", str(readme)]) == 1


def test_changed_data_changes_the_table(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = readme_tables.TABLES["scaling"].run
    shutil.copytree(readme_tables.RUNS / run, runs / run, ignore=shutil.ignore_patterns("logs"))
    data = json.loads((runs / run / "scaling.json").read_text())
    data["rows"][0]["cold_start_s"] = 1234.5
    (runs / run / "scaling.json").write_text(json.dumps(data))
    assert "1234.5 s" in readme_tables.render_table("scaling", runs)
    assert "1234.5 s" not in readme_tables.render_table("scaling")


def test_an_unknown_table_name_is_an_error() -> None:
    with pytest.raises(KeyError, match="does not know"):
        readme_tables.render_readme("<!-- table nosuch: x -->\n<!-- end table nosuch -->")
