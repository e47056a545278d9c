"""docs/das-settings.md lists exactly DAS's settings, as bench/das_settings.py prints them."""

from __future__ import annotations

from pathlib import Path

from conftest import load_bench

from recsys.models.das import DASConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "das-settings.md"


def _settings(table: str) -> list[str]:
    return [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]]


def test_the_table_lists_every_das_setting_and_the_doc_is_current():
    bench = load_bench("das_settings")
    table = bench.table()
    assert _settings(table) == list(bench.flat(DASConfig()))
    assert table in DOC.read_text()
