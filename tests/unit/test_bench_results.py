"""`make bench` keeps every run's results: a second run on one day writes <date>-2.json."""

from __future__ import annotations

from bench.stats import unused


def test_a_second_run_on_one_day_does_not_replace_the_first(tmp_path):
    first = tmp_path / "2026-11-29.json"
    assert unused(first) == first
    first.write_text("{}")
    assert unused(first) == tmp_path / "2026-11-29-2.json"
    (tmp_path / "2026-11-29-2.json").write_text("{}")
    assert unused(first) == tmp_path / "2026-11-29-3.json"
    assert first.read_text() == "{}"
