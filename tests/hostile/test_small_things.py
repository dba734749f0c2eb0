"""Smaller hostile findings, each with its test: a baseline nested a hundred thousand levels deep, a
repair that could not check a damaged file, an operating-system error with no file named."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dbstate import content_hashes, damage_root_page
from toolkit.config import load_settings
from toolkit.fixtures import generate


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    settings = load_settings(tmp_path_factory.mktemp("small") / "data", env={})
    generate(settings, trades=400, tickers=5, seed=23, defects={"realized_pnl_mismatch": 1})
    return settings


@pytest.fixture
def data(template, tmp_path: Path) -> Path:
    shutil.copytree(template.data_dir, tmp_path / "data")
    return tmp_path / "data"


def _one_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_deeply_nested_baseline_is_refused_not_a_crash(cli, data: Path, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"schema_version": 1, "violations": ' + "[" * 100_000 + "]" * 100_000 + "}")
    before = content_hashes(load_settings(data, env={}))
    result = cli("integrity", "--data-dir", str(data), "check", "--baseline", str(deep))
    assert result.returncode == 2
    assert "nested too deeply" in _one_error(result) and str(deep) in result.stderr
    assert content_hashes(load_settings(data, env={})) == before


def _damage(path: Path, table: str) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    damage_root_page(path, table, whole=True)


def test_a_repair_that_skipped_rules_on_a_damaged_file_does_not_exit_0(cli, data: Path) -> None:
    """ml_training.db damaged: its rules are skipped; the repair of the rest may run, but the command
    must not report success as if everything had been checked and repaired."""
    _damage(data / "ml_training.db", "training_episodes")
    result = cli("integrity", "--data-dir", str(data), "repair", "--apply", "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not repaired" in result.stdout and "skipped" in result.stdout


def test_a_damaged_repair_journal_names_its_file(cli, data: Path) -> None:
    _damage(data / "ml_training.db", "_toolkit_repair_journal")
    result = cli("integrity", "--data-dir", str(data), "repair", "--apply", "--yes")
    assert result.returncode == 3
    line = _one_error(result)
    assert "ml_training.db" in line and "migrate restore" in line


def test_an_operating_system_error_names_its_file_and_the_next_step(cli, data: Path, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("not a directory")
    result = cli("integrity", "--data-dir", str(data), "check", "--format", "json", "--output", str(target / "report.json"))
    assert result.returncode == 2
    line = _one_error(result)
    assert str(target) in line and "[Errno" not in line and "check that its directory exists" in line
