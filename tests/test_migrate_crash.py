"""Crashes and concurrency with real processes (issue item 7): SIGKILL mid-migration, SIGKILL between
a file's commit and the ledger write, two runners at once, and a lock holder that dies.

No mocks: every runner is `python -m toolkit migrate ...` (or the CLI entry in `python -c`), and the
test waits for a marker file the migration writes before it kills anything.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from toolkit.errors import MigrationFailedError
from toolkit.content import load_migrations
from toolkit.migrate.runner import upgrade

import subproc
from bundled import BUNDLED, BUNDLED_IDS, after, ids_of

pytestmark = pytest.mark.slow

SLOW_PREAMBLE = """
import os
import time
from pathlib import Path
"""

# Writes a marker and sleeps only when the test asks (TOOLKIT_TEST_MARKER), so that verify, which
# replays applied migrations in memory, and later runs are not slowed down.
SLOW_UPGRADE = """
db.execute("CREATE TABLE crash_probe (x INTEGER)")
db.execute("INSERT INTO crash_probe VALUES (1)")
marker = os.environ.get("TOOLKIT_TEST_MARKER")
if marker:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("TOOLKIT_TEST_SLEEP", "0")))
"""


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    return subproc.finish(proc, timeout, "the runner")


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 20) -> None:
    subproc.wait_for(marker, proc, timeout, "the runner")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("TOOLKIT_DATA_DIR", "DB_PATH_PREFIX", "TOOLKIT_TEST_MARKER", "TOOLKIT_TEST_SLEEP"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    code, _, _ = finish(proc)
    assert code == -signal.SIGKILL


def upgrade_events(lifecycle, data_dir: Path) -> Counter:
    return Counter(mid for mid, action, status in lifecycle.events(data_dir) if (action, status) == ("upgrade", "applied"))


@pytest.fixture
def slow_dir(extra_dir, lifecycle) -> Path:
    lifecycle.write_migration(extra_dir, "900_slow_probe.py", SLOW_UPGRADE, 'db.execute("DROP TABLE crash_probe")',
                              preamble=SLOW_PREAMBLE, doc="Create a probe table, then (when asked) stall.")
    return extra_dir


def runner(settings, slow_dir: Path, *args: str) -> list[str]:
    return ["-m", "toolkit", "migrate", "--data-dir", str(settings.data_dir), "--migrations-dir", str(slow_dir), *args]


# -- SIGKILL in the middle of a migration ---------------------------------------------------------

def test_sigkill_mid_migration_leaves_the_file_as_it_was(migrated, slow_dir, lifecycle, cli, tmp_path):
    marker = tmp_path / "inside-900"
    before = lifecycle.snapshot(migrated.data_dir)
    proc = start(*runner(migrated, slow_dir, "upgrade"),
                 env={"TOOLKIT_TEST_MARKER": str(marker), "TOOLKIT_TEST_SLEEP": "60"})
    wait_for(marker, proc)
    kill(proc)

    # the half-applied migration is not in the file, and the ledger does not claim it
    assert "crash_probe" not in lifecycle.objects(migrated.path("trading"))
    assert lifecycle.records(migrated.path("trading")) == ids_of("trading")
    assert "900" not in lifecycle.history(migrated.data_dir)
    assert lifecycle.snapshot(migrated.data_dir) == before

    status = cli("migrate", "--data-dir", str(migrated.data_dir), "--migrations-dir", str(slow_dir), "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert {d["name"]: d["pending"] for d in report["databases"]} == {"positions": [], "trading": ["900"], "ml_training": []}
    assert report["reconciled"] == [] and report["up_to_date"] is False

    # the dead runner's lock blocks nobody; the next upgrade applies 900 exactly once
    started = time.monotonic()
    result = cli("migrate", "--data-dir", str(migrated.data_dir), "--migrations-dir", str(slow_dir),
                 "--lock-timeout", "10", "upgrade")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    assert result.stdout.splitlines()[0].startswith("applied 900_slow_probe to trading")
    assert lifecycle.records(migrated.path("trading")) == [*ids_of("trading"), "900"]
    assert lifecycle.rows(migrated.path("trading"), "SELECT count(*) FROM crash_probe") == [(1,)]
    assert upgrade_events(lifecycle, migrated.data_dir)["900"] == 1
    assert lifecycle.history(migrated.data_dir)["900"][0] == "applied"
    verify = cli("migrate", "--data-dir", str(migrated.data_dir), "--migrations-dir", str(slow_dir), "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- SIGKILL after the file's commit, before the ledger write -------------------------------------

def test_sigkill_between_file_commit_and_ledger_write_is_reconciled(settings, lifecycle, cli):
    data = str(settings.data_dir)
    code = textwrap.dedent(f"""
        import os, signal, sys
        import toolkit.migrate.runner as r
        def die(point, migration):
            if point == "after_file_commit" and migration.id == "004":
                os.kill(os.getpid(), signal.SIGKILL)
        r.CHECKPOINT[0] = die
        from toolkit.cli import run, migrate_group
        sys.exit(run(migrate_group, ["--data-dir", {data!r}, "upgrade"]))
    """)
    proc = start("-c", code)
    returncode, out, err = finish(proc)
    assert returncode == -signal.SIGKILL, out + err

    # trading.db has 004 (committed with its record); the ledger never heard of it; 005 and later never ran
    assert lifecycle.records(settings.path("trading")) == ["002", "004"]
    assert "trades" in lifecycle.objects(settings.path("trading"))
    assert lifecycle.records(settings.path("ml_training")) == ["003"]
    ledger = lifecycle.history(settings.data_dir)
    assert {mid: row[0] for mid, row in ledger.items()} == {"001": "applied", "002": "applied", "003": "applied"}

    # status only reads: it reports what is to reconcile and writes nothing
    before = lifecycle.snapshot(settings.data_dir)
    status = cli("migrate", "--data-dir", data, "status")
    assert status.returncode == 0, status.stderr
    notes = [line for line in status.stderr.splitlines() if line.startswith("to reconcile: ")]
    assert len(notes) == 1 and "reconciled:" not in status.stderr
    assert "004_create_ledger_tables" in notes[0] and "trading.db" in notes[0] and "records it as applied" in notes[0]
    assert lifecycle.snapshot(settings.data_dir) == before

    # the next writing command reconciles (once) and says so
    result = cli("migrate", "--data-dir", data, "upgrade")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("reconciled: ")]
    assert len(notes) == 1
    assert "004_create_ledger_tables" in notes[0] and "trading.db" in notes[0] and "recorded as applied" in notes[0]
    assert lifecycle.history(settings.data_dir)["004"][0] == "applied"
    assert Counter(e for e in lifecycle.events(settings.data_dir) if e[1] == "reconcile") == {("004", "reconcile", "applied"): 1}
    assert "reconcile" not in cli("migrate", "--data-dir", data, "status").stderr  # said once, then true
    assert [line.split()[1] for line in result.stdout.splitlines()] == [m.label for m in after("004")]
    applied = upgrade_events(lifecycle, settings.data_dir)
    # 004 was never run a second time
    assert applied == {"001": 1, "002": 1, "003": 1, **{m.id: 1 for m in after("004")}}
    for name in ("positions", "trading", "ml_training"):
        assert lifecycle.records(settings.path(name)) == ids_of(name), name
    verify = cli("migrate", "--data-dir", data, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- two runners at once --------------------------------------------------------------------------

def test_two_upgrades_started_together_apply_each_migration_once(settings, slow_dir, lifecycle, cli, tmp_path):
    env = {"TOOLKIT_TEST_MARKER": str(tmp_path / "marker"), "TOOLKIT_TEST_SLEEP": "2"}
    procs = [start(*runner(settings, slow_dir, "--lock-timeout", "30", "upgrade"), env=env) for _ in range(2)]
    results = [finish(p) for p in procs]
    assert [r[0] for r in results] == [0, 0], results
    outputs = [r[1] for r in results]
    worker = [i for i, out in enumerate(outputs) if "applied 900_slow_probe" in out]
    assert len(worker) == 1, outputs
    waiter = 1 - worker[0]
    assert "nothing to upgrade" in outputs[waiter]
    assert f"waiting for the data directory lock held by pid {procs[worker[0]].pid} " in results[waiter][2]

    assert lifecycle.records(settings.path("positions")) == ids_of("positions")
    assert lifecycle.records(settings.path("trading")) == [*ids_of("trading"), "900"]
    assert lifecycle.records(settings.path("ml_training")) == ids_of("ml_training")
    assert upgrade_events(lifecycle, settings.data_dir) == {mid: 1 for mid in (*BUNDLED_IDS, "900")}
    assert lifecycle.rows(settings.path("trading"), "SELECT count(*) FROM crash_probe") == [(1,)]
    verify = cli("migrate", "--data-dir", str(settings.data_dir), "--migrations-dir", str(slow_dir), "verify")
    assert verify.returncode == 0, verify.stdout


def test_a_runner_that_cannot_get_the_lock_in_time_names_the_holder(migrated, slow_dir, lifecycle, cli, tmp_path):
    marker = tmp_path / "marker"
    holder = start(*runner(migrated, slow_dir, "upgrade"),
                   env={"TOOLKIT_TEST_MARKER": str(marker), "TOOLKIT_TEST_SLEEP": "4"})
    try:
        wait_for(marker, holder)
        before = lifecycle.records(migrated.path("positions"))
        started = time.monotonic()
        loser = cli("migrate", "--data-dir", str(migrated.data_dir), "--migrations-dir", str(slow_dir),
                    "--lock-timeout", "0.3", "upgrade")
        waited = time.monotonic() - started
        # status does not wait for the lock: it reports who holds it
        status = cli("migrate", "--data-dir", str(migrated.data_dir), "--migrations-dir", str(slow_dir), "status", "--json")
        assert holder.poll() is None, "the holder finished too early for this test to mean anything"
    finally:
        code, out, err = finish(holder)
    assert code == 0, err
    assert loser.returncode == 3
    errors = [line for line in loser.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "locked by" in errors[0] and f"pid {holder.pid} " in errors[0], loser.stderr
    assert "migrate upgrade" in errors[0]  # the holder's command
    assert waited >= 0.3
    assert "applied" not in loser.stdout
    assert lifecycle.records(migrated.path("positions")) == before
    assert status.returncode == 0, status.stderr
    assert f"pid {holder.pid} " in json.loads(status.stdout)["lock_holder"]
    assert upgrade_events(lifecycle, migrated.data_dir)["900"] == 1


def test_a_killed_lock_holder_does_not_block_the_next_runner(settings, cli):
    settings.data_dir.mkdir(parents=True)
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from toolkit.lock import data_dir_lock
        with data_dir_lock(Path({str(settings.lock_path)!r}), timeout=5, command="test holder"):
            print("held", flush=True)
            time.sleep(60)
    """)
    proc = start("-c", code)
    try:
        assert proc.stdout.readline().strip() == "held"
        blocked = cli("migrate", "--data-dir", str(settings.data_dir), "--lock-timeout", "0.2", "upgrade")
        assert blocked.returncode == 3
        assert f"locked by pid {proc.pid} " in blocked.stderr and "(test holder)" in blocked.stderr
        assert not settings.path("positions").exists()
    finally:
        victim = proc.pid
        kill(proc)
    started = time.monotonic()
    result = cli("migrate", "--data-dir", str(settings.data_dir), "--lock-timeout", "10", "upgrade")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    assert f"previous lock holder pid {victim} " in result.stderr
    assert len(result.stdout.splitlines()) == len(BUNDLED)


def test_the_in_process_lock_is_released_after_a_failure(migrated, lifecycle, extra_dir):
    """A runner that fails (not killed) releases the lock at once: the next one needs no takeover."""
    lifecycle.write_migration(extra_dir, "900_fails.py", 'db.execute("SELECT * FROM nowhere")')
    with pytest.raises(MigrationFailedError):
        extra = migrated.with_(migrations_dirs=(extra_dir,))
        upgrade(extra, migrations=load_migrations(extra))
    assert migrated.lock_path.read_text() == ""
    messages: list[str] = []
    upgrade(migrated.with_(lock_timeout=0.0), migrations=load_migrations(migrated), progress=messages.append)
    assert not [m for m in messages if "taken over" in m or "waiting" in m]


def test_sigkill_between_file_commit_and_ledger_write_of_a_downgrade(migrated, lifecycle, cli):
    data = str(migrated.data_dir)
    code = textwrap.dedent(f"""
        import os, signal, sys
        import toolkit.migrate.runner as r
        def die(point, migration):
            if point == "after_file_commit" and migration.id == "005":
                os.kill(os.getpid(), signal.SIGKILL)
        r.CHECKPOINT[0] = die
        from toolkit.cli import run, migrate_group
        sys.exit(run(migrate_group, ["--data-dir", {data!r}, "downgrade", "--migration", "004", "--yes"]))
    """)
    returncode, out, err = finish(start("-c", code))
    assert returncode == -signal.SIGKILL, out + err
    # the newer ones were reverted and recorded before 005; 005 is reverted in the file
    assert lifecycle.records(migrated.path("ml_training")) == ["003"]
    assert lifecycle.records(migrated.path("trading")) == ["002", "004"]  # 004 was next, never reached
    assert lifecycle.records(migrated.path("positions")) == ["001"]
    assert {lifecycle.history(migrated.data_dir)[m.id][0] for m in after("005")} == {"rolled_back"}
    assert lifecycle.history(migrated.data_dir)["005"][0] == "applied"  # the ledger is behind the file

    # status only reads: it reports what is to reconcile and writes nothing
    before = lifecycle.snapshot(migrated.data_dir)
    status = cli("migrate", "--data-dir", data, "status")
    assert status.returncode == 0, status.stderr
    notes = [line for line in status.stderr.splitlines() if line.startswith("to reconcile: ")]
    assert len(notes) == 1 and "005_create_rl_model_states" in notes[0] and "records it as rolled back" in notes[0]
    assert lifecycle.snapshot(migrated.data_dir) == before
    assert lifecycle.history(migrated.data_dir)["005"][0] == "applied"

    # the next writing command reconciles it, then reverts 004 only
    result = cli("migrate", "--data-dir", data, "downgrade", "--migration", "004", "--yes")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("reconciled: ")]
    assert len(notes) == 1 and "005_create_rl_model_states" in notes[0] and "recorded as rolled back" in notes[0]
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["004_create_ledger_tables"]
    downgrades = Counter(mid for mid, action, st in lifecycle.events(migrated.data_dir) if action == "downgrade")
    assert downgrades == {"004": 1, **{m.id: 1 for m in after("005")}}  # 005 never ran a second time
    assert cli("migrate", "--data-dir", data, "verify").returncode == 0


def test_sigint_mid_migration_rolls_back_and_releases_the_lock(migrated, slow_dir, lifecycle, cli, tmp_path):
    marker = tmp_path / "inside-900"
    before = lifecycle.snapshot(migrated.data_dir)
    proc = start(*runner(migrated, slow_dir, "upgrade"),
                 env={"TOOLKIT_TEST_MARKER": str(marker), "TOOLKIT_TEST_SLEEP": "60"})
    wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert lifecycle.snapshot(migrated.data_dir) == before
    assert migrated.lock_path.read_text() == ""  # released on the way out, not merely by the kernel
    result = cli("migrate", "--data-dir", str(migrated.data_dir), "--migrations-dir", str(slow_dir),
                 "--lock-timeout", "0", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "taken over" not in result.stderr
    assert lifecycle.records(migrated.path("trading")) == [*ids_of("trading"), "900"]
