"""A read-only snapshot: the gate and the read commands run on a data directory nobody may write
(`chmod -R a-w`, the way CI checks a snapshot) and leave every file byte for byte as it was — no
`-wal`/`-shm` appears, no lock file, no run recorded — and read commands never rewrite the migration
ledger's history, not even when a data file is lost.

The tests run as root, who bypasses permission bits: the toolkit treats the mode bits as
authoritative, so these tests would catch a command that writes anyway.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from dbstate import content_hashes
from toolkit.config import load_settings
from toolkit.content import load_registry
from toolkit.fixtures import generate
from toolkit.rules.history import record_check_run
from toolkit.rules.runner import run_checks

NOTE = "run history not recorded: {path} is read-only; use --history-file FILE to keep it elsewhere"


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """A clean and a defective session, each with one check run recorded (for `integrity history`)."""
    made = {}
    for kind, defects in (("clean", None), ("defective", {"bankroll_mismatch": 1, "unsplit_flips": 2})):
        settings = load_settings(tmp_path_factory.mktemp(f"read-only-{kind}") / "data", env={})
        generate(settings, trades=300, tickers=5, seed=8, defects=defects)
        report = run_checks(settings, registry=load_registry(settings))
        assert report.exit_code == (1 if defects else 0)
        record_check_run(settings, report)
        made[kind] = settings.data_dir
    return made


def _freeze(path: Path) -> None:
    for entry in [path, *path.iterdir()]:
        entry.chmod(stat.S_IMODE(entry.stat().st_mode) & ~0o222)


def _thaw(path: Path) -> None:
    if path.exists():
        for entry in [path, *path.iterdir()]:
            entry.chmod(stat.S_IMODE(entry.stat().st_mode) | 0o200)


@pytest.fixture
def snapshot(request, tmp_path: Path):
    """Copy a template session and make it read-only (directory and files); permissions come back after."""

    def make(source: Path, *, before_freezing=None) -> Path:
        data = tmp_path / "data"
        shutil.copytree(source, data)
        if before_freezing is not None:
            before_freezing(data)
        request.addfinalizer(lambda: _thaw(data))
        _freeze(data)
        return data

    return make


def files(data: Path) -> dict[str, tuple[str, int]]:
    """Every entry of the directory (hidden ones, -wal and -shm included): its bytes' SHA-256 and mode."""
    return {entry.name: (hashlib.sha256(entry.read_bytes()).hexdigest(), entry.stat().st_mode)
            for entry in sorted(data.iterdir())}


def error_line(result, *needles: str) -> str:
    # ours ("error: ...") or click's own usage check ("Error: Invalid value ...")
    lines = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- the gate and the read commands on a read-only snapshot ---------------------------------------

@pytest.mark.parametrize("kind, code", [("clean", 0), ("defective", 1)])
def test_the_gate_runs_on_a_read_only_snapshot_and_says_the_run_was_not_recorded(cli, templates, snapshot, kind, code):
    data = snapshot(templates[kind])
    before = files(data)
    result = cli("integrity", "--data-dir", str(data), "check", "--format", "json")
    assert result.returncode == code, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["exit_code"] == code
    if kind == "defective":
        failed = {r["id"] for r in report["rules"] if r["status"] == "failed"}
        assert {"bankroll_mismatch", "unsplit_flips"} <= failed
    assert result.stderr.splitlines() == [NOTE.format(path=data / "migrations.db")]
    assert files(data) == before


def test_migrate_status_and_verify_run_on_a_read_only_snapshot(cli, templates, snapshot):
    data = snapshot(templates["clean"])
    before = files(data)
    status = cli("migrate", "--data-dir", str(data), "status")
    assert status.returncode == 0, status.stderr
    assert "up to date" in status.stdout and status.stderr == ""
    report = json.loads(cli("migrate", "--data-dir", str(data), "status", "--json").stdout)
    assert report["up_to_date"] is True and report["to_reconcile"] == [] and report["lock_holder"] is None
    verify = cli("migrate", "--data-dir", str(data), "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "no findings" in verify.stdout and verify.stderr == ""
    assert files(data) == before


def test_integrity_history_reads_a_read_only_snapshot(cli, templates, snapshot):
    data = snapshot(templates["defective"])
    before = files(data)
    listing = cli("integrity", "--data-dir", str(data), "history", "--json")
    assert listing.returncode == 0, listing.stderr
    runs = json.loads(listing.stdout)
    assert len(runs) == 1 and runs[0]["exit_code"] == 1
    one = cli("integrity", "--data-dir", str(data), "history", runs[0]["run_id"], "--json")
    assert one.returncode == 0, one.stderr
    assert {r["rule"] for r in json.loads(one.stdout)["results"] if r["status"] == "failed"} >= {"bankroll_mismatch"}
    assert files(data) == before


def test_history_file_keeps_the_runs_of_a_read_only_snapshot(cli, templates, snapshot, tmp_path: Path):
    data = snapshot(templates["defective"])
    before = files(data)
    runs_file = tmp_path / "runs" / "gate-history.db"
    runs_file.parent.mkdir()
    ids = []
    for _ in range(2):  # created on the first run, appended to on the second
        result = cli("integrity", "--data-dir", str(data), "check", "--history-file", str(runs_file), "--format", "json")
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr == ""
        ids.append(json.loads(result.stdout)["run_id"])
    assert files(data) == before
    assert sorted(os.listdir(runs_file.parent)) == ["gate-history.db"]

    listing = cli("integrity", "--data-dir", str(data), "history", "--history-file", str(runs_file), "--json")
    assert listing.returncode == 0, listing.stderr
    assert [r["run_id"] for r in json.loads(listing.stdout)] == ids[::-1]
    one = cli("integrity", "--data-dir", str(data), "history", ids[0], "--history-file", str(runs_file))
    assert one.returncode == 0, one.stderr
    assert ids[0] in one.stdout and "bankroll_mismatch" in one.stdout
    # the snapshot's own history still holds only the run recorded before it was frozen
    own = json.loads(cli("integrity", "--data-dir", str(data), "history", "--json").stdout)
    assert len(own) == 1 and own[0]["run_id"] not in ids
    assert files(data) == before


# -- a snapshot taken with a live write-ahead log ---------------------------------------------------

def _commit_into_the_wal(data: Path, snapshot_dir: Path, *, with_shm: bool) -> None:
    """Copy ``data`` into ``snapshot_dir`` while a writer holds a commit in trading.db's -wal only."""
    writer = sqlite3.connect(data / "trading.db", isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE account SET cash_balance = cash_balance + 1000")
        assert (data / "trading.db-wal").stat().st_size > 0
        shutil.rmtree(snapshot_dir)
        shutil.copytree(data, snapshot_dir)
        if not with_shm:
            (snapshot_dir / "trading.db-shm").unlink()
    finally:
        writer.close()


def test_a_snapshot_with_a_live_wal_is_read_with_its_commits(cli, templates, snapshot, tmp_path: Path):
    live = tmp_path / "live"
    shutil.copytree(templates["clean"], live)
    data = snapshot(templates["clean"], before_freezing=lambda d: _commit_into_the_wal(live, d, with_shm=True))
    assert (data / "trading.db-wal").stat().st_size > 0 and (data / "trading.db-shm").exists()
    before = files(data)
    result = cli("integrity", "--data-dir", str(data), "check", "--rule", "bankroll_mismatch", "--format", "json")
    # the commit lives only in the -wal: a check that ignored it would pass
    assert result.returncode == 1, result.stdout + result.stderr
    assert json.loads(result.stdout)["rules"][0]["count"] == 1
    assert result.stderr.splitlines() == [NOTE.format(path=data / "migrations.db")]
    assert cli("migrate", "--data-dir", str(data), "status").returncode == 0
    assert files(data) == before


def test_a_live_wal_without_its_shm_in_a_read_only_directory_is_refused(cli, templates, snapshot, tmp_path: Path):
    live = tmp_path / "live"
    shutil.copytree(templates["clean"], live)
    data = snapshot(templates["clean"], before_freezing=lambda d: _commit_into_the_wal(live, d, with_shm=False))
    before = files(data)
    result = cli("integrity", "--data-dir", str(data), "check")
    assert result.returncode == 3, result.stdout + result.stderr
    error_line(result, str(data / "trading.db"), "write-ahead log", "-shm")
    assert files(data) == before


# -- --history-file: bad input changes nothing ----------------------------------------------------

def test_history_file_refuses_what_cannot_be_a_run_history(cli, templates, snapshot, tmp_path: Path):
    data = snapshot(templates["clean"])
    elsewhere = tmp_path / "elsewhere.db"
    shutil.copy(templates["clean"] / "positions.db", elsewhere)  # SQLite, but not a run history
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [
        (data / "trading.db", "is a database of"),
        (data / "migrations.db", "is a database of"),
        (data / "trading.db-wal", "is a database of"),
        (elsewhere, "not a run history (it has table"),
        (text, "is not an SQLite database"),
        (fifo, "is not a regular file"),
        (tmp_path, "is a directory"),
        (tmp_path / "missing" / "runs.db", "its directory does not exist"),
    ]
    before, outside = files(data), {p: p.read_bytes() for p in (elsewhere, text)}
    for path, why in cases:
        result = cli("integrity", "--data-dir", str(data), "check", "--history-file", str(path))
        assert result.returncode == 2, (path, result.stdout + result.stderr)
        error_line(result, "--history-file", str(path), why)
        assert result.stdout == ""
    assert files(data) == before
    assert {p: p.read_bytes() for p in outside} == outside
    assert not (tmp_path / "missing").exists()
    same = cli("integrity", "--data-dir", str(data), "check", "--history-file", str(tmp_path / "r"), "--output", str(tmp_path / "r"))
    assert same.returncode == 2 and not (tmp_path / "r").exists()
    error_line(same, "--output and --history-file name the same file")
    missing = cli("integrity", "--data-dir", str(data), "history", "--history-file", str(tmp_path / "none.db"))
    assert missing.returncode == 2
    error_line(missing, str(tmp_path / "none.db"), "does not exist")
    assert not (tmp_path / "none.db").exists()


def test_every_new_option_has_help(cli):
    check = cli("integrity", "check", "--help")
    assert check.returncode == 0 and "--history-file FILE" in check.stdout and "read-only" in check.stdout
    history = cli("integrity", "history", "--help")
    assert history.returncode == 0 and "--history-file FILE" in history.stdout


# -- read commands never rewrite the ledger's history ---------------------------------------------

def _lose(data: Path, how: str) -> None:
    path = data / "trading.db"
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["deleted", "truncated"])
@pytest.mark.parametrize("command", ["status", "verify"])
def test_a_lost_data_file_does_not_make_status_or_verify_rewrite_the_ledger(cli, templates, tmp_path, command, how):
    data = tmp_path / "data"
    shutil.copytree(templates["clean"], data)
    _lose(data, how)
    ledger = data / "migrations.db"
    before_bytes = hashlib.sha256(ledger.read_bytes()).hexdigest()
    before = content_hashes(load_settings(data, env={}), ["migrations"])
    result = cli("migrate", "--data-dir", str(data), command)
    assert result.returncode == (0 if command == "status" else 1), result.stdout + result.stderr
    assert "reconciled:" not in result.stderr
    # a lost file is reported as lost, and is not something a writing command would "reconcile" away
    assert not [line for line in result.stderr.splitlines() if line.startswith("to reconcile: ")], result.stderr
    assert "LOST" in result.stdout or "lost" in result.stdout, result.stdout
    assert "migrate restore --database trading" in result.stdout
    assert hashlib.sha256(ledger.read_bytes()).hexdigest() == before_bytes
    assert content_hashes(load_settings(data, env={}), ["migrations"]) == before


@pytest.mark.parametrize("how, code", [("deleted", 3), ("truncated", 3)])
def test_a_lost_data_file_does_not_make_the_gate_rewrite_the_ledger(cli, templates, tmp_path, how, code):
    data = tmp_path / "data"
    shutil.copytree(templates["clean"], data)
    _lose(data, how)

    def ledger() -> list:
        conn = sqlite3.connect((data / "migrations.db").resolve().as_uri() + "?mode=ro", uri=True)
        try:
            return [conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("migration_history", "migration_events")]
        finally:
            conn.close()

    before = ledger()
    result = cli("integrity", "--data-dir", str(data), "check")
    assert result.returncode == code, result.stdout + result.stderr
    error_line(result, str(data / "trading.db"), "migrate restore --database trading")
    assert ledger() == before


def test_the_repair_log_reads_a_read_only_snapshot(cli, snapshot, tmp_path_factory) -> None:
    settings = load_settings(tmp_path_factory.mktemp("repaired") / "data", env={})
    generate(settings, trades=300, tickers=4, seed=41, defects={"realized_pnl_mismatch": 1})
    assert cli("integrity", "--data-dir", str(settings.data_dir), "repair", "--apply", "--yes").returncode == 0
    shutil.rmtree(settings.backup_dir)  # the snapshot: the databases and the lock file
    data = snapshot(settings.data_dir)
    before = files(data)
    result = cli("integrity", "--data-dir", str(data), "repair", "log", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["status"] == "applied"
    assert files(data) == before
