"""Crashes of `integrity repair --apply` with real processes (SIGKILL), SPEC §6.

The runner is the real CLI (`toolkit.cli.integrity_main`) in a child process; a few lines installed
before it starts make it stop at a known point and write a marker file:

- mid-apply: after the writer's batches reached all three files, inside the one transaction, it
  sleeps; the test SIGKILLs it. COMMIT never happened, so every file must be exactly as before, the
  gate must still report the original violations, and a new repair must work.
- after COMMIT, before the run is copied into migrations.db: it SIGKILLs itself. Every file holds all
  of its repair and its journal; the next repair command reconciles the log ("logged now"), and
  `repair undo` of that run restores the session exactly.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from toolkit.config import DATABASES, Settings, load_settings
from toolkit.fixtures import generate
from toolkit.rules import run_checks
from toolkit.content import load_registry

import subproc
from dbstate import content_hashes, query, tables

pytestmark = pytest.mark.slow

REGISTRY = load_registry(plugins=False)
DEFECTS = {"unlinked_closes": 4, "realized_pnl_mismatch": 2, "lot_status_inconsistent": 2, "position_ledger_mismatch": 4,
           "bankroll_mismatch": 1, "opening_leg_with_pnl": 2, "rl_state_missing_avg_reward": 2, "unsplit_flips": 1}
NOT_REPAIRABLE = {"unsplit_flips"}

#: Installed in the child before the CLI runs (REPAIR_CRASH picks the point, REPAIR_MARKER the file).
WRAPPER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    import toolkit.repair.apply as apply
    import toolkit.repair.undo as undo
    import toolkit.repair.writer as writer

    marker = Path(os.environ["REPAIR_MARKER"])
    point = os.environ["REPAIR_CRASH"]
    if point == "mid-apply":
        execute = writer.Writer._execute
        written = set()

        def stall(self, batch):
            execute(self, batch)
            written.add(batch[0].database)
            if written == {"trading", "positions", "ml_training"} and not marker.exists():
                marker.write_text(str(os.getpid()))
                time.sleep(120)

        writer.Writer._execute = stall
    elif point in ("after-commit", "before-commit"):
        record_run = apply.record_run
        runs = []

        def remember(settings, result, **kwargs):
            runs.append(result.run_id)
            record_run(settings, result, **kwargs)

        def die(at):
            if at == point.replace("-", "_"):
                marker.write_text(runs[-1])
                os.kill(os.getpid(), signal.SIGKILL)

        apply.record_run = remember
        apply.CHECKPOINT[0] = die
    elif point == "undo-after-commit":
        def die_undo(settings, undo_id, run_id, rows, now):
            marker.write_text(undo_id)
            os.kill(os.getpid(), signal.SIGKILL)

        undo.record_undo = die_undo
    from toolkit.cli import integrity_main
    sys.argv = ["integrity", *sys.argv[1:]]
    integrity_main()
""")


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    return subproc.finish(proc, timeout, "the repair")


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    subproc.wait_for(marker, proc, timeout, "the repair")


def _settings(data_dir: Path) -> Settings:
    return load_settings(data_dir, cwd=data_dir.parent, env={}, busy_timeout=2.0, lock_timeout=5.0)


def journal(settings: Settings, name: str) -> list[tuple]:
    if not query(settings, name, "SELECT 1 FROM sqlite_master WHERE name = '_toolkit_repair_journal'"):
        return []
    return query(settings, name, "SELECT run_id, seq FROM _toolkit_repair_journal ORDER BY run_id, seq")


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("TOOLKIT_DATA_DIR", "DB_PATH_PREFIX"):
        env.pop(name, None)
    env.update(extra)
    return env


def start_repair(settings: Settings, point: str, marker: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRAPPER, "--data-dir", str(settings.data_dir), "repair", "--apply", "--yes"],
        env=_env({"REPAIR_CRASH": point, "REPAIR_MARKER": str(marker)}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def gate_fingerprints(cli, settings: Settings) -> dict[str, set[str]]:
    result = cli("integrity", "--data-dir", str(settings.data_dir), "check", "--format", "json", "--sample", "1000")
    assert result.returncode in (0, 1), result.stderr
    return {r["id"]: {s["fingerprint"] for s in r["samples"]} for r in json.loads(result.stdout)["rules"]}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    settings = _settings(tmp_path_factory.mktemp("crash-template") / "data")
    manifest = generate(settings, trades=3_000, tickers=30, seed=909, defects=DEFECTS)
    return settings, manifest


@pytest.fixture
def session(template, tmp_path: Path):
    source, manifest = template
    target = _settings(tmp_path / "data")
    shutil.copytree(source.data_dir, target.data_dir)
    return target, manifest


def test_sigkill_mid_apply_leaves_every_file_as_it_was(session, cli, tmp_path: Path) -> None:
    settings, manifest = session
    before = content_hashes(settings, DATABASES)
    marker = tmp_path / "inside-the-transaction"
    proc = start_repair(settings, "mid-apply", marker)
    wait_for(marker, proc)
    # the writer has written to every file (uncommitted): another reader still sees the old state
    assert content_hashes(settings, DATABASES) == before
    os.kill(proc.pid, signal.SIGKILL)
    code, _, _ = finish(proc)
    assert code == -signal.SIGKILL

    # COMMIT never happened: each file has none of its repair, and no journal row or log entry
    assert content_hashes(settings, DATABASES) == before
    assert all(journal(settings, name) == [] for name in DATABASES)
    assert query(settings, "migrations", "SELECT count(*) FROM repair_runs")[0][0] == 0
    assert query(settings, "migrations", "SELECT count(*) FROM repair_log")[0][0] == 0
    # the gate still reports exactly the original violations
    found = gate_fingerprints(cli, settings)
    for rule_id in REGISTRY.ids:
        assert found[rule_id] == manifest.expected(rule_id), rule_id

    # the kernel released the lock: a new repair runs at once and works
    started = time.monotonic()
    again = cli("integrity", "--data-dir", str(settings.data_dir), "--lock-timeout", "10", "repair", "--apply", "--yes")
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started < 10
    assert "applied and verified" in again.stdout
    report = run_checks(settings, registry=REGISTRY)
    assert {r.rule.id for r in report.results if r.count} == NOT_REPAIRABLE


def test_sigkill_after_commit_is_reconciled_and_undoable(session, cli, tmp_path: Path) -> None:
    settings, manifest = session
    before = tables(settings)
    marker = tmp_path / "committed"
    proc = start_repair(settings, "after-commit", marker)
    code, out, err = finish(proc)
    assert code == -signal.SIGKILL, (code, out, err)
    run_id = marker.read_text()

    # every file holds all of its repair and its journal; migrations.db knows the run only as committing
    report = run_checks(settings, registry=REGISTRY)
    assert {r.rule.id for r in report.results if r.count} == NOT_REPAIRABLE
    journaled = {name: len(journal(settings, name)) for name in DATABASES}
    assert all(journaled[name] > 0 for name in DATABASES), journaled  # the defects touch all three files
    assert query(settings, "migrations", "SELECT status FROM repair_runs WHERE run_id = ?", (run_id,)) == [("committing",)]
    assert query(settings, "migrations", "SELECT count(*) FROM repair_log WHERE run_id = ?", (run_id,))[0][0] == 0

    # the next repair command settles the log from the journals, says so, and has nothing left to change
    after_commit = tables(settings)
    nxt = cli("integrity", "--data-dir", str(settings.data_dir), "repair", "--apply", "--yes")
    assert nxt.returncode == 0, nxt.stderr
    notes = [line for line in nxt.stderr.splitlines() if line.startswith("reconciled:")]
    assert notes and all(run_id in n for n in notes) and notes[-1].endswith("logged as applied"), nxt.stderr
    assert query(settings, "migrations", "SELECT status FROM repair_runs WHERE run_id = ?", (run_id,)) == [("applied",)]
    assert tables(settings) == after_commit
    logged = query(settings, "migrations", "SELECT database_name, count(*) FROM repair_log WHERE run_id = ? GROUP BY 1", (run_id,))
    assert dict(logged) == journaled
    log = json.loads(cli("integrity", "--data-dir", str(settings.data_dir), "repair", "log", "--json").stdout)
    entry = next(r for r in log if r["run_id"] == run_id)
    assert entry["kind"] == "repair" and entry["changes"] == sum(journaled.values())

    # and the reconciled run can be undone: the session is exactly as it was before the crash
    undo = cli("integrity", "--data-dir", str(settings.data_dir), "repair", "undo", run_id, "--yes")
    assert undo.returncode == 0, undo.stderr
    assert f"undid {run_id}: {sum(journaled.values())} row(s) restored" in undo.stdout
    assert tables(settings) == before
    found = gate_fingerprints(cli, settings)
    for rule_id in manifest.defects:
        assert found[rule_id] == manifest.expected(rule_id), rule_id


def test_sigkill_after_an_undo_commits_still_marks_the_run_undone(session, cli, tmp_path: Path) -> None:
    """The undo's journal rows name the run they reverse: if the undo dies after its commit but
    before migrations.db records it, the next command logs it and marks the repair run undone."""
    settings, manifest = session
    before = tables(settings)
    applied = cli("integrity", "--data-dir", str(settings.data_dir), "repair", "--apply", "--yes")
    assert applied.returncode == 0, applied.stderr
    run_id = json.loads(cli("integrity", "--data-dir", str(settings.data_dir), "repair", "log", "--json").stdout)[0]["run_id"]
    marker = tmp_path / "undone"
    env = dict(os.environ, REPAIR_CRASH="undo-after-commit", REPAIR_MARKER=str(marker))
    proc = subprocess.run([sys.executable, "-c", WRAPPER, "--data-dir", str(settings.data_dir), "repair", "undo", run_id, "--yes"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    undo_id = marker.read_text()
    assert tables(settings) == before  # the files hold the whole undo
    log = json.loads(cli("integrity", "--data-dir", str(settings.data_dir), "repair", "log", "--json").stdout)
    runs = {r["run_id"]: r for r in log}
    assert runs[undo_id]["kind"] == "undo" and runs[undo_id]["undoes"] == run_id
    assert runs[run_id]["undone_by"] == undo_id
    again = cli("integrity", "--data-dir", str(settings.data_dir), "repair", "undo", run_id, "--yes")
    assert again.returncode == 2 and "already undone" in again.stderr, again.stderr


def test_sigkill_just_before_the_commit_changes_nothing_and_says_so(session, cli, tmp_path: Path) -> None:
    """Killed after the run was logged as committing but before any file committed: every file is as
    it was, and the next command logs the run as not committed (never as applied)."""
    settings, _ = session
    before = tables(settings)
    marker = tmp_path / "before"
    code, out, err = finish(start_repair(settings, "before-commit", marker))
    assert code == -signal.SIGKILL, (code, out, err)
    run_id = marker.read_text()
    assert tables(settings) == before
    assert all(not [r for r in journal(settings, name) if r[0] == run_id] for name in DATABASES)
    nxt = cli("integrity", "--data-dir", str(settings.data_dir), "repair", "--apply", "--yes")  # settles, then repairs
    assert nxt.returncode == 0, nxt.stderr
    assert f"reconciled: repair run {run_id} ended while committing: committed to no file" in nxt.stderr
    assert "logged as not committed" in nxt.stderr
    assert query(settings, "migrations", "SELECT status, changes FROM repair_runs WHERE run_id = ?", (run_id,)) == \
        [("not committed", 0)]
