"""Every `integrity check` is recorded in migrations.db (run id, time, per rule: count and sample)."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from ..config import Settings
from ..db import transaction
from ..errors import UnknownNameError
from ..history import open_history
from .runner import CheckReport

__all__ = ["record_check_run", "CheckRun", "list_check_runs", "check_run"]


def record_check_run(settings: Settings, report: CheckReport) -> None:
    history = open_history(settings, create=True)
    assert history is not None
    try:
        with transaction(history):
            history.execute(
                "INSERT INTO check_runs (run_id, started_at, duration_seconds, data_dir, fail_on, baseline, rules, "
                "violations, blocking, exit_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (report.run_id, int(report.started_at), report.seconds, report.data_dir, report.fail_on.name,
                 report.baseline, len(report.results), report.violations, len(report.blocking), report.exit_code))
            history.executemany(
                "INSERT INTO check_results (run_id, rule_id, severity, status, count, baselined, sample, error, "
                "duration_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(report.run_id, r.rule.id, r.rule.severity.name, r.status, r.count, r.baselined,
                  json.dumps([v.to_dict() for v in r.samples], default=str), r.error or r.reason, r.seconds)
                 for r in report.results])
    finally:
        history.close()


@dataclass(frozen=True)
class CheckRun:
    run_id: str
    started_at: int
    seconds: float
    fail_on: str
    baseline: str | None
    rules: int
    violations: int
    blocking: int
    exit_code: int
    results: tuple[dict, ...] = ()


def _open(settings: Settings) -> sqlite3.Connection | None:
    if not settings.history_path.exists():
        return None
    return open_history(settings)


def list_check_runs(settings: Settings, *, limit: int = 20) -> list[CheckRun]:
    history = _open(settings)
    if history is None:
        return []
    try:
        rows = history.execute(
            "SELECT run_id, started_at, duration_seconds, fail_on, baseline, rules, violations, blocking, exit_code "
            "FROM check_runs ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
    finally:
        history.close()
    return [CheckRun(*row) for row in rows]


def check_run(settings: Settings, run_id: str) -> CheckRun:
    history = _open(settings)
    if history is None:
        raise UnknownNameError("check run", run_id, [])
    try:
        row = history.execute(
            "SELECT run_id, started_at, duration_seconds, fail_on, baseline, rules, violations, blocking, exit_code "
            "FROM check_runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            known = [r[0] for r in history.execute("SELECT run_id FROM check_runs ORDER BY started_at DESC LIMIT 50")]
            raise UnknownNameError("check run", run_id, known)
        results = tuple(
            {"rule": r[0], "severity": r[1], "status": r[2], "count": r[3], "baselined": r[4],
             "sample": json.loads(r[5]), "error": r[6], "seconds": r[7]}
            for r in history.execute(
                "SELECT rule_id, severity, status, count, baselined, sample, error, duration_seconds "
                "FROM check_results WHERE run_id = ? ORDER BY rowid", (run_id,)))
    finally:
        history.close()
    return CheckRun(*row, results=results)
