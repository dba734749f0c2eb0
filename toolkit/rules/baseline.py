"""Baselines: accepted violations, by fingerprint (rule id + natural key, never amounts).

A violation whose fingerprint is in the baseline does not fail the gate; only new ones do. The
file is JSON and diff-friendly (one entry per violation, sorted)::

    {"schema_version": 1, "violations": [{"rule": "unlinked_closes", "key": {"trade_id": 42}}, ...]}
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .model import fingerprint
from .runner import CheckReport

__all__ = ["BASELINE_SCHEMA_VERSION", "Baseline", "load_baseline", "write_baseline", "prune_baseline"]

BASELINE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Baseline:
    path: Path
    entries: dict[str, dict]  # fingerprint -> {"rule": ..., "key": ...}

    @property
    def fingerprints(self) -> frozenset[str]:
        return frozenset(self.entries)


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read and validate a baseline file; a malformed one is refused, naming the problem."""
    path = Path(path)
    hint = "recreate it with `integrity baseline create FILE`"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"baseline {path} does not exist", hint="create it with `integrity baseline create FILE`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"baseline {path} cannot be read: {exc}", hint=hint) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"baseline {path} is not valid JSON (line {exc.lineno}: {exc.msg})", hint=hint) from None
    except RecursionError:
        raise UsageError(f"baseline {path} is nested too deeply to be a baseline", hint=hint) from None
    if not isinstance(data, dict) or data.get("schema_version") != BASELINE_SCHEMA_VERSION:
        raise UsageError(f"baseline {path}: expected an object with \"schema_version\": {BASELINE_SCHEMA_VERSION}", hint=hint)
    items = data.get("violations")
    if not isinstance(items, list):
        raise UsageError(f"baseline {path}: \"violations\" must be a list", hint=hint)
    entries: dict[str, dict] = {}
    for index, item in enumerate(items):
        if not (isinstance(item, dict) and isinstance(item.get("rule"), str) and isinstance(item.get("key"), dict)):
            raise UsageError(f"baseline {path}: entry {index} must be {{\"rule\": \"<rule id>\", \"key\": {{...}}}}", hint=hint)
        try:
            entries[fingerprint(item["rule"], item["key"])] = {"rule": item["rule"], "key": item["key"]}
        except (RecursionError, ValueError, TypeError) as exc:
            raise UsageError(f"baseline {path}: entry {index} has a key that is not plain JSON ({type(exc).__name__})",
                             hint=hint) from None
    return Baseline(path, entries)


def _entries_of(report: CheckReport) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    for result in report.results:
        for fp in result.fingerprints or ():
            rule_id, _, key = fp.partition(":")
            entries[fp] = {"rule": rule_id, "key": json.loads(key)}
    return entries


def _write(path: Path, entries: dict[str, dict]) -> None:
    ordered = [entries[fp] for fp in sorted(entries)]
    data = {"schema_version": BASELINE_SCHEMA_VERSION, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "violations": ordered}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def write_baseline(path: str | os.PathLike[str], report: CheckReport) -> int:
    """Accept every violation of a check run (collected with ``collect=True``); returns how many."""
    entries = _entries_of(report)
    _write(Path(path), entries)
    return len(entries)


def prune_baseline(path: str | os.PathLike[str], report: CheckReport) -> tuple[int, int]:
    """Drop accepted violations that no longer occur; returns (kept, removed)."""
    baseline = load_baseline(path)
    current = _entries_of(report)
    checked = {r.rule.id for r in report.results if r.status in ("passed", "failed")}
    kept = {fp: e for fp, e in baseline.entries.items() if fp in current or e["rule"] not in checked}
    _write(Path(path), kept)
    return len(kept), len(baseline.entries) - len(kept)
