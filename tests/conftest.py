"""Shared fixtures: real SQLite files under tmp_path, the CLI in-process and as a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory that does not exist yet (commands must create or refuse it)."""
    return tmp_path / "data"


@pytest.fixture
def settings(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("TOOLKIT_DATA_DIR", raising=False)
    monkeypatch.delenv("DB_PATH_PREFIX", raising=False)
    return load_settings(data_dir, cwd=data_dir.parent, env={}, busy_timeout=2.0, lock_timeout=5.0)


@pytest.fixture
def migrated(settings: Settings) -> Settings:
    """Settings of a data directory with every bundled migration applied."""
    from toolkit.migrate.runner import upgrade

    upgrade(settings)
    return settings


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m toolkit ...` as a real subprocess."""
    full_env = dict(os.environ)
    full_env.pop("TOOLKIT_DATA_DIR", None)
    full_env.pop("DB_PATH_PREFIX", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        cwd=cwd, env=full_env, input=input, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli
