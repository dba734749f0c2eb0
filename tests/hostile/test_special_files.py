"""Special files in a database's place never hang a command: a FIFO (or a directory) where a file
should be is refused before SQLite touches it — one line naming it, exit 3, nothing else changed."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dbstate import content_hashes
from toolkit.config import DATABASES, load_settings
from toolkit.fixtures import generate

COMMANDS = [("integrity", "check"), ("migrate", "status"), ("migrate", "upgrade"), ("migrate", "verify"),
            ("integrity", "repair"), ("integrity", "repair", "--apply", "--yes")]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    settings = load_settings(tmp_path_factory.mktemp("special") / "data", env={})
    generate(settings, trades=300, tickers=5, seed=8)
    return settings


@pytest.fixture
def data(template, tmp_path: Path) -> Path:
    shutil.copytree(template.data_dir, tmp_path / "data")
    return tmp_path / "data"


def _others(data: Path, replaced: str) -> dict[str, str]:
    names = [n for n in (*DATABASES, "migrations") if n != replaced]
    return content_hashes(load_settings(data, env={}), names)


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
@pytest.mark.parametrize("name", ["trading", "migrations"])
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_special_file_in_a_database_s_place_is_refused(cli, data: Path, command, name: str, kind: str) -> None:
    path = data / f"{name}.db"
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    before = _others(data, name)
    result = cli(command[0], "--data-dir", str(data), *command[1:], timeout=30)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(path) in lines[0] and ("not a regular file" in lines[0] or "is a directory" in lines[0])
    assert _others(data, name) == before


def test_a_fifo_for_a_lock_file_is_refused_not_waited_on(cli, data: Path) -> None:
    lock = data / ".toolkit.lock"
    lock.unlink(missing_ok=True)
    os.mkfifo(lock)
    before = content_hashes(load_settings(data, env={}))
    result = cli("migrate", "--data-dir", str(data), "upgrade", timeout=30)
    assert result.returncode == 3, result.stderr
    assert "lock file is not a regular file" in result.stderr
    status = cli("migrate", "--data-dir", str(data), "status", timeout=30)  # reads the lock holder: must not block
    assert status.returncode == 0, status.stderr
    assert content_hashes(load_settings(data, env={})) == before
