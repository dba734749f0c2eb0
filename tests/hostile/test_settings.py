"""Settings that would switch a check off or wait forever are refused at load: one line naming the
setting and where it came from, exit 2, nothing read or written."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dbstate import content_hashes
from toolkit.config import load_settings
from toolkit.fixtures import generate


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    settings = load_settings(tmp_path_factory.mktemp("settings") / "data", env={})
    generate(settings, trades=300, tickers=5, seed=4, defects={"bankroll_mismatch": 1})
    return settings


@pytest.fixture
def project(template, tmp_path: Path):
    shutil.copytree(template.data_dir, tmp_path / "data")
    return tmp_path


PYPROJECT_CASES = {
    "tolerance = nan": ("tolerance", "finite"),
    "tolerance = inf": ("tolerance", "finite"),
    "tolerance = -1": ("tolerance", "between"),
    'tolerance = "abc"': ("tolerance", "a number"),
    "tolerance = true": ("tolerance", "a number"),
    "busy-timeout = nan": ("busy-timeout", "finite"),
    "lock-timeout = -5": ("lock-timeout", "between"),
    "backup-retention = 0": ("backup-retention", "between"),
    "backup-retention = 2.5": ("backup-retention", "whole number"),
    "migrations-dir = 5": ("migrations-dir", "a path"),
    "checks-dir = [1, 2]": ("checks-dir", "a path"),
    "data-dir = 5": ("data-dir", "a path"),
    "db-path-prefix = 3": ("db-path-prefix", "prefix"),
    "[tool.toolkit.rules.bankroll_mismatch]\ntolerance = nan": ("[tool.toolkit.rules.bankroll_mismatch] tolerance", "finite"),
    "[tool.toolkit.rules.bankroll_mismatch]\ntolerance = 1e300": ("[tool.toolkit.rules.bankroll_mismatch] tolerance", "between"),
    "[tool.toolkit.rules]\nbankroll_mismatch = 5": ("[tool.toolkit.rules.bankroll_mismatch]", "a table"),
}


def _one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [("integrity", "check"), ("migrate", "status")], ids=["check", "status"])
@pytest.mark.parametrize("setting", list(PYPROJECT_CASES))
def test_a_bad_pyproject_setting_is_refused(cli, project: Path, setting: str, command: tuple[str, str]) -> None:
    table = "" if setting.startswith("[") else "[tool.toolkit]\n"
    (project / "pyproject.toml").write_text(f"{table}{setting}\n", encoding="utf-8")
    before = content_hashes(load_settings(project / "data", env={}))
    result = cli(command[0], "--data-dir", str(project / "data"), command[1], cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    name, why = PYPROJECT_CASES[setting]
    line = _one_line(result)
    assert name in line and why in line and "pyproject.toml" in line
    assert content_hashes(load_settings(project / "data", env={})) == before


@pytest.mark.parametrize("option", [("--busy-timeout", "nan"), ("--busy-timeout", "inf"), ("--lock-timeout", "nan"),
                                    ("--lock-timeout", "1e12")])
def test_a_bad_numeric_option_is_refused(cli, project: Path, option: tuple[str, str]) -> None:
    before = content_hashes(load_settings(project / "data", env={}))
    result = cli("integrity", "--data-dir", str(project / "data"), option[0], option[1], "check", cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    line = _one_line(result)
    assert option[0].lstrip("-") in line and "(from option)" in line
    assert content_hashes(load_settings(project / "data", env={})) == before


def test_a_nan_tolerance_can_no_longer_pass_a_critical_mismatch(cli, project: Path) -> None:
    """The finding that started it: with tolerance = nan the gate used to pass a bankroll mismatch."""
    (project / "pyproject.toml").write_text("[tool.toolkit]\ntolerance = nan\n", encoding="utf-8")
    refused = cli("integrity", "--data-dir", str(project / "data"), "check", cwd=project)
    assert refused.returncode == 2
    (project / "pyproject.toml").write_text("[tool.toolkit]\ntolerance = 0.01\n", encoding="utf-8")
    gate = cli("integrity", "--data-dir", str(project / "data"), "check", "--rule", "bankroll_mismatch", cwd=project)
    assert gate.returncode == 1 and "bankroll_mismatch" in gate.stdout
