"""Results tables: atomic writes, provenance keys, resume."""

import json
from dataclasses import asdict, dataclass

import pandas as pd
import pytest

from pladis_analysis.results import ResultsTable, meta_path, read_table, write_table


@dataclass
class _Cfg:
    sizes: tuple = (1, 2)


def test_write_then_read_round_trips_with_provenance(tmp_path):
    path = write_table(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.csv", {"git_commit": "x"})
    assert read_table(path)["a"].tolist() == [1, 2]
    assert json.loads(meta_path(path).read_text())["git_commit"] == "x"
    assert not list(tmp_path.glob(".*tmp")), "a temporary file was left behind"


def test_table_flush_records_the_required_provenance(tmp_path):
    t = ResultsTable(tmp_path / "r.csv", keys=["k"], config=asdict(_Cfg()), seeds=[3])
    t.add({"k": 1, "v": 0.5})
    meta = json.loads(meta_path(t.flush()).read_text())
    for key in ("git_commit", "created", "config", "seeds", "versions", "device", "threads"):
        assert key in meta, key
    assert meta["seeds"] == [3] and meta["versions"]["torch"]


def test_rerun_resumes_rows_and_a_changed_config_starts_afresh(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PLADIS_GIT_COMMIT", "aaaaaaa1")
    t = ResultsTable(tmp_path / "r.csv", keys=["k"], config=asdict(_Cfg()))
    t.add({"k": 1, "v": 0.5})
    t.flush()
    assert "rows_from_commits" not in json.loads(meta_path(tmp_path / "r.csv").read_text())

    monkeypatch.setenv("PLADIS_GIT_COMMIT", "bbbbbbb2")
    again = ResultsTable(tmp_path / "r.csv", keys=["k"], config=asdict(_Cfg()))  # tuples vs JSON lists
    assert again.has(k=1) and not again.has(k=2)
    again.add({"k": 2, "v": 0.25})
    again.flush()
    meta = json.loads(meta_path(tmp_path / "r.csv").read_text())
    assert meta["git_commit"] == "bbbbbbb2" and meta["rows_from_commits"] == ["aaaaaaa1", "bbbbbbb2"]

    monkeypatch.setenv("PLADIS_GIT_COMMIT", "ccccccc3")
    with caplog.at_level("WARNING", logger="pladis_analysis.results"):
        changed = ResultsTable(tmp_path / "r.csv", keys=["k"], config=asdict(_Cfg(sizes=(3,))))
    assert not changed.has(k=1)
    assert "sizes: [1, 2] → [3]" in caplog.text
    # the table of the other config was moved aside, not overwritten
    moved = tmp_path / "r_history" / "r_bbbbbbb.csv"
    assert not (tmp_path / "r.csv").exists() and read_table(moved)["k"].tolist() == [1, 2]
    assert json.loads(meta_path(moved).read_text())["rows_from_commits"] == ["aaaaaaa1", "bbbbbbb2"]
    changed.add({"k": 3, "v": 1.0})
    changed.flush()
    assert "rows_from_commits" not in json.loads(meta_path(tmp_path / "r.csv").read_text())


def test_resume_without_new_rows_names_only_the_commits_that_wrote_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PLADIS_GIT_COMMIT", "aaaaaaa1")
    t = ResultsTable(tmp_path / "r.csv", keys=["k"], config=asdict(_Cfg()))
    t.add({"k": 1, "v": 0.5})
    t.flush()
    monkeypatch.setenv("PLADIS_GIT_COMMIT", "bbbbbbb2")
    ResultsTable(tmp_path / "r.csv", keys=["k"], config=asdict(_Cfg())).flush()
    assert json.loads(meta_path(tmp_path / "r.csv").read_text())["rows_from_commits"] == ["aaaaaaa1"]


def test_a_second_archive_of_the_same_commit_gets_a_new_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PLADIS_GIT_COMMIT", "aaaaaaa1")
    for sizes in ((1,), (2,), (3,)):
        t = ResultsTable(tmp_path / "r.csv", keys=["k"], config=asdict(_Cfg(sizes=sizes)))
        t.add({"k": sizes[0]})
        t.flush()
    history = sorted(p.name for p in (tmp_path / "r_history").glob("*.csv"))
    assert history == ["r_aaaaaaa.csv", "r_aaaaaaa_2.csv"]
    assert read_table(tmp_path / "r_history" / "r_aaaaaaa_2.csv")["k"].tolist() == [2]


def test_no_resume_replaces_the_table_in_place(tmp_path):
    t = ResultsTable(tmp_path / "r.csv", keys=["k"], config=asdict(_Cfg()))
    t.add({"k": 1})
    t.flush()
    fresh = ResultsTable(tmp_path / "r.csv", keys=["k"], config=asdict(_Cfg(sizes=(3,))), resume=False)
    assert not fresh.has(k=1) and not (tmp_path / "r_history").exists()


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="key columns"):
        ResultsTable(tmp_path / "r.csv", keys=["k"]).add({"v": 1})
    with pytest.raises(ValueError, match=".csv"):
        write_table(pd.DataFrame(), tmp_path / "r.parquet", {})
    with pytest.raises(FileNotFoundError, match="run the experiment"):
        read_table(tmp_path / "missing.csv")


def test_git_commit_can_be_given_by_the_environment(monkeypatch):
    from pladis_analysis.results import git_commit

    monkeypatch.setenv("PLADIS_GIT_COMMIT", "abc123")
    assert git_commit() == "abc123"
    monkeypatch.delenv("PLADIS_GIT_COMMIT")
    assert git_commit() != "abc123"


def test_keys_survive_the_csv_round_trip(tmp_path):
    """pandas reads the 1 of a column that also holds 1.5 back as 1.0, None as NaN and "01" as 1: string keys
    compared as written missed such rows on resume, and every rerun appended them again."""
    t = ResultsTable(tmp_path / "r.csv", keys=["k"], config={"a": 1})
    for value in (1, 1.5, None, "03", "red"):
        t.add({"k": value, "v": 0.0})
    t.flush()
    again = ResultsTable(tmp_path / "r.csv", keys=["k"], config={"a": 1})
    assert all(again.has(k=value) for value in (1, 1.0, 1.5, None, float("nan"), "03", 3, "red"))
    assert not again.has(k=2) and not again.has(k="blue")
    with pytest.raises(ValueError, match="already in the table"):
        again.add({"k": 1.5})


def test_write_table_moves_a_table_of_another_config_aside(tmp_path, caplog):
    """Tables written whole (summaries, benchmarks): a --quick run does not overwrite a full run's table."""
    path = tmp_path / "s.csv"
    write_table(pd.DataFrame({"a": [1, 2, 3]}), path, {"config": {"quick": False}})
    write_table(pd.DataFrame({"a": [4, 5, 6]}), path, {"config": {"quick": False}})  # same config: replaced
    assert not (tmp_path / "s_history").exists()
    with caplog.at_level("WARNING", logger="pladis_analysis.results"):
        write_table(pd.DataFrame({"a": [7]}), path, {"config": {"quick": True}})
    assert "quick: False → True" in caplog.text
    (moved,) = (tmp_path / "s_history").glob("*.csv")
    assert read_table(moved)["a"].tolist() == [4, 5, 6]
    meta_path(path).unlink()  # a table without its metadata is of an unknown config: moved aside too
    write_table(pd.DataFrame({"a": [8]}), path, {"config": {"quick": True}})
    assert len(list((tmp_path / "s_history").glob("*.csv"))) == 2 and read_table(path)["a"].tolist() == [8]


def test_where_results_go_and_nan_are_not_config_changes(tmp_path):
    t = ResultsTable(tmp_path / "r.csv", keys=["k"], config={"out": "results", "x": float("nan")})
    t.add({"k": 1})
    t.flush()
    again = ResultsTable(tmp_path / "r.csv", keys=["k"], config={"out": str(tmp_path) + "/", "x": float("nan")})
    assert again.has(k=1) and not (tmp_path / "r_history").exists()


def test_a_table_flushed_without_rows_reopens(tmp_path):
    ResultsTable(tmp_path / "r.csv", keys=["k"], config={}).flush()
    again = ResultsTable(tmp_path / "r.csv", keys=["k"], config={})
    assert again.rows == [] and not again.has(k=1)
