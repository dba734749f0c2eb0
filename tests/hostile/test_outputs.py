"""Outputs never hit inputs: a report, a baseline or a plan is never written over a database of the
data directory, any SQLite file, a directory or a FIFO (exit 2, one line, nothing changed)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dbstate import content_hashes
from toolkit.config import Settings, load_settings
from toolkit.fixtures import generate


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Settings:
    settings = load_settings(tmp_path_factory.mktemp("outputs") / "data", env={})
    generate(settings, trades=300, tickers=5, seed=3)
    return settings


@pytest.fixture
def session(template: Settings, tmp_path: Path) -> Settings:
    shutil.copytree(template.data_dir, tmp_path / "data")
    return load_settings(tmp_path / "data", env={})


def _one_line(result: subprocess.CompletedProcess) -> str:
    # ours ("error: ...") or click's own usage check ("Error: Invalid value ...")
    lines = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _targets(session: Settings, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    other = tmp_path / "other.sqlite"
    shutil.copy(session.path("ml_training"), other)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    return {
        "trading.db": (session.path("trading"), "is a database of"),
        "migrations.db": (session.path("migrations"), "is a database of"),
        "a WAL file": (Path(f"{session.path('positions')}-wal"), "is a database of"),
        "another SQLite file": (other, "is an SQLite database"),
        "a FIFO": (fifo, "is not a regular file"),
        "a directory": (folder, "is a directory"),
    }


@pytest.mark.parametrize("command", ["check --format json --output", "baseline create", "repair --save-plan"])
@pytest.mark.parametrize("kind", ["trading.db", "migrations.db", "a WAL file", "another SQLite file", "a FIFO", "a directory"])
def test_an_output_over_an_input_is_refused(cli, session: Settings, tmp_path: Path, command: str, kind: str) -> None:
    target, message = _targets(session, tmp_path)[kind]
    before = content_hashes(session)
    other_before = (tmp_path / "other.sqlite").read_bytes()
    result = cli("integrity", "--data-dir", str(session.data_dir), *command.split(), str(target))
    assert result.returncode == 2, result.stdout + result.stderr
    line = _one_line(result)
    assert message in line and str(target) in line
    assert content_hashes(session) == before
    assert (tmp_path / "other.sqlite").read_bytes() == other_before


def test_a_report_replaces_its_own_previous_file_whole(cli, session: Settings, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("an older report\n")
    result = cli("integrity", "--data-dir", str(session.data_dir), "check", "--format", "json", "--output", str(target))
    assert result.returncode == 0, result.stderr
    assert target.read_text().startswith("{") and not list(tmp_path.glob(".report.json.*"))
