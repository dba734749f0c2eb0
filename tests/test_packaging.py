"""The distribution works installed from a wheel, in a fresh virtualenv, from any working directory.

Builds the wheel from a copy of the source tree (so the repository gets no build/ directory), installs
it with its dependencies from the package index, and runs the schema lifecycle with the installed
`migrate` script and `python -m toolkit`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bundled import BUNDLED, NEWEST, ids_of

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".hypothesis", "data", "*.pyc")


def _run(args: list[str | Path], *, cwd: Path, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TOOLKIT_DATA_DIR", "DB_PATH_PREFIX", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=SKIP)
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, source], cwd=root)
    (wheel,) = wheels.glob("*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", wheel], cwd=root)
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip())
    elsewhere = root / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    return {"source": source, "wheel": wheel, "venv": venv, "python": python, "migrate": venv / "bin" / "migrate",
            "purelib": purelib, "cwd": elsewhere}


@pytest.mark.slow
def test_the_wheel_ships_one_import_package(installed):
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = wheel.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"toolkit"}
    for required in ("toolkit/migrations/001_create_positions_tables.py", "toolkit/migrations/005_create_rl_model_states.py",
                     f"toolkit/migrations/{NEWEST.path.name}",
                     "toolkit/checks/__init__.py", "toolkit/fixtures/__init__.py", "toolkit/migrate/runner.py"):
        assert required in names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert not dist_info.startswith("toolkit-")  # the name `toolkit` is taken on PyPI

    packages = {p.name for p in installed["purelib"].iterdir()
                if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py")}
    # the project's own content never lands at the top of site-packages
    assert not {"fixtures", "checks", "migrations"} & packages
    assert "toolkit" in packages
    ours = [p.name for p in installed["purelib"].glob("paper_ledger_toolkit*.dist-info")]
    assert len(ours) == 1
    top_level = (installed["purelib"] / ours[0] / "top_level.txt")
    if top_level.exists():
        assert top_level.read_text().split() == ["toolkit"]
    # and it is the installed copy that runs, not the repository
    where = _run([installed["python"], "-c", "import toolkit; print(toolkit.__file__)"], cwd=installed["cwd"]).stdout
    assert Path(where.strip()).is_relative_to(installed["purelib"])


@pytest.mark.slow
def test_the_wheel_ships_every_module_of_the_source_tree(installed):
    """Every module of the engine (toolkit/**) and of the content (migrations/, checks/, fixtures/)
    is in the wheel, under toolkit/: a subpackage left out of pyproject.toml breaks the installed
    commands while the editable install in the repository keeps working."""
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = set(wheel.namelist())
    source = installed["source"]  # the tree the wheel was built from
    expected = set()
    for top, inside in (("toolkit", "toolkit"), ("migrations", "toolkit/migrations"),
                        ("checks", "toolkit/checks"), ("fixtures", "toolkit/fixtures")):
        for path in (source / top).rglob("*.py"):
            expected.add(f"{inside}/{path.relative_to(source / top).as_posix()}")
    assert "toolkit/migrate/runner.py" in expected
    assert sorted(expected - names) == []


@pytest.mark.slow
def test_the_installed_migrate_runs_the_lifecycle_from_another_directory(installed, tmp_path):
    migrate, cwd = installed["migrate"], installed["cwd"]
    data = tmp_path / "data"
    up = _run([migrate, "upgrade", "--data-dir", data], cwd=cwd)
    assert len(up.stdout.splitlines()) == len(BUNDLED)

    status = _run([migrate, "--data-dir", data, "status", "--json"], cwd=cwd)
    report = json.loads(status.stdout)
    assert report["up_to_date"] is True
    assert {d["name"]: d["applied"] for d in report["databases"]} == {
        name: ids_of(name) for name in ("positions", "trading", "ml_training")}

    assert _run([migrate, "--data-dir", data, "verify"], cwd=cwd).returncode == 0
    down = _run([migrate, "--data-dir", data, "downgrade", "--yes"], cwd=cwd)
    assert len(down.stdout.splitlines()) == len(BUNDLED)
    assert _run([migrate, "--data-dir", data, "upgrade"], cwd=cwd).returncode == 0
    assert _run([migrate, "--data-dir", data, "verify"], cwd=cwd).returncode == 0
    assert not (cwd / "data").exists()  # nothing strayed into the working directory


@pytest.mark.slow
def test_python_dash_m_toolkit_works_when_installed(installed, tmp_path):
    python, cwd = installed["python"], installed["cwd"]
    result = _run([python, "-m", "toolkit", "migrate", "--help"], cwd=cwd)
    for command in ("upgrade", "downgrade", "status", "verify", "accept", "restore"):
        assert command in result.stdout
    for args in ([python, "-m", "toolkit", "integrity", "--help"], [installed["venv"] / "bin" / "integrity", "--help"]):
        assert "check" in _run(args, cwd=cwd).stdout  # the other console script is installed too
    data = tmp_path / "via-module"
    _run([python, "-m", "toolkit", "migrate", "--data-dir", data, "upgrade"], cwd=cwd)
    status = json.loads(_run([python, "-m", "toolkit", "migrate", "--data-dir", data, "status", "--json"], cwd=cwd).stdout)
    assert status["up_to_date"] is True


@pytest.mark.slow
def test_the_source_tree_runs_beside_a_non_editable_install(installed, tmp_path):
    """From the repository root the source tree's toolkit/ shadows the installed one: it finds its
    content in the folders beside it (migrations/, checks/, fixtures/), as `python -m fixtures` does."""
    python, source = installed["python"], installed["source"]
    data = tmp_path / "x"
    up = _run([python, "-m", "toolkit", "migrate", "--data-dir", data, "upgrade"], cwd=source)
    assert len(up.stdout.splitlines()) == len(BUNDLED)
    where = _run([python, "-c", "import toolkit, toolkit.content as c; print(toolkit.__file__); "
                                "print(c.content_package('migrations').__file__)"], cwd=source).stdout.split()
    assert Path(where[0]).is_relative_to(source) and Path(where[1]) == source / "migrations" / "__init__.py"
    status = json.loads(_run([python, "-m", "toolkit", "migrate", "--data-dir", data, "status", "--json"], cwd=source).stdout)
    assert status["up_to_date"] is True
    session = tmp_path / "session"
    _run([python, "-m", "fixtures", "generate", "--data-dir", session, "--trades", "400", "--tickers", "5", "--quiet"],
         cwd=source)
    check = _run([python, "-m", "toolkit", "integrity", "--data-dir", session, "check"], cwd=source, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # and the installed copy, from anywhere else, finds the same content inside the package
    listed = _run([python, "-m", "toolkit.fixtures", "defects"], cwd=installed["cwd"]).stdout
    assert "unlinked_closes" in listed
