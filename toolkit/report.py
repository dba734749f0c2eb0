"""Renderers of one check result model: table, JSON (versioned), JUnit XML, SARIF 2.1.0, Markdown."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree as ET

from . import __version__
from .rules.model import Severity, Violation
from .rules.runner import CheckReport, RuleResult

__all__ = ["FORMATS", "JSON_SCHEMA_VERSION", "render", "to_json_data", "render_plan", "render_repair", "plan_data", "printable",
           "summary"]

JSON_SCHEMA_VERSION = 1
TOOL_NAME = "paper-ledger-toolkit"
TOOL_URI = "https://pypi.org/project/paper-ledger-toolkit/"
_SARIF_LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning", Severity.LOW: "note"}


#: Characters that could forge or hide output: C0/C1 controls (newlines, terminal escapes), line
#: and paragraph separators, bidirectional overrides.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(value: Any, limit: int = 200) -> str:
    """Stored text as it may be shown: every control character escaped (``\\x0a``), and cut at
    ``limit`` characters with its length shown — a value can neither forge a line nor flood a report."""
    text = value if isinstance(value, str) else str(value)
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e6 or not abs(value) < 1e15 else f"{value:,.2f}"
    return printable(value, 60)


def _key(violation: Violation, limit: int = 80) -> str:
    return printable(", ".join(f"{k}={printable(v, limit)}" for k, v in violation.key.items()), 2 * limit)


def _md(text: str) -> str:
    """Printable text that cannot break a Markdown table or open HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _outcome(result: RuleResult, report: CheckReport) -> str:
    if result.status == "failed" and not result.blocks(report.fail_on):
        return "warn"
    return {"passed": "ok", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}[result.status]


def _detail(result: RuleResult) -> str:
    if result.status == "error":
        return printable(f"error: {result.error}")
    if result.status == "skipped":
        return printable(f"skipped: {result.reason}")
    return result.rule.description


def summary(report: CheckReport) -> str:
    blocking = report.blocking
    verdict = "FAILED" if blocking else "passed"
    counts = {s: sum(1 for r in report.results if r.status == s) for s in ("failed", "error", "skipped")}
    return (f"gate {verdict} (fail-on {report.fail_on.name}): {len(report.results)} rules, "
            f"{report.violations} violation(s), {counts['failed']} failing, {counts['error']} error(s), "
            f"{counts['skipped']} skipped, {len(blocking)} blocking; run {report.run_id}, {report.seconds:.2f} s")


def render_table(report: CheckReport) -> str:
    from tabulate import tabulate

    rows = [[_outcome(r, report), r.rule.id, r.rule.severity.name, r.count,
             r.baselined or "", _detail(r)[:90]] for r in report.results]
    parts = [tabulate(rows, headers=["", "rule", "severity", "count", "baselined", "description / reason"],
                      tablefmt="simple", disable_numparse=True)]
    for result in report.results:
        if not result.samples:
            continue
        shown = len(result.samples)
        parts.append(f"\n{result.rule.id}: {result.count} violation(s)" + (f", first {shown}" if shown < result.count else ""))
        parts.append(tabulate([[_key(v), _fmt(v.stored), _fmt(v.computed), _fmt(v.difference), _fmt(v.tolerance), printable(v.message, 110)]
                               for v in result.samples],
                              headers=["key", "stored", "computed", "difference", "tolerance", "message"],
                              tablefmt="simple", disable_numparse=True))
    parts.append("\n" + summary(report))
    return "\n".join(parts)


def to_json_data(report: CheckReport) -> dict[str, Any]:
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": __version__},
        "run_id": report.run_id,
        "data_dir": report.data_dir,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(report.started_at)),
        "duration_seconds": round(report.seconds, 4),
        "fail_on": report.fail_on.name,
        "baseline": report.baseline,
        "exit_code": report.exit_code,
        "summary": {
            "rules": len(report.results),
            "violations": report.violations,
            "baselined": sum(r.baselined for r in report.results),
            "blocking_rules": [r.rule.id for r in report.blocking],
            **{s: sum(1 for r in report.results if r.status == s) for s in ("passed", "failed", "error", "skipped")},
        },
        "rules": [
            {
                "id": r.rule.id,
                "severity": r.rule.severity.name,
                "description": r.rule.description,
                "databases": list(r.rule.databases),
                "repairable": r.rule.repairable,
                "status": r.status,
                "blocking": r.blocks(report.fail_on),
                "count": r.count,
                "baselined": r.baselined,
                "error": r.error,
                "skipped_reason": r.reason,
                "duration_seconds": round(r.seconds, 4),
                "samples": [_bounded(dict(v.to_dict(), fingerprint=v.fingerprint)) for v in r.samples],
            }
            for r in report.results
        ],
    }


def _bounded(sample: dict[str, Any], limit: int = 1000) -> dict[str, Any]:
    """A JSON sample with no string longer than ``limit`` (JSON escapes controls itself); the
    fingerprint, which identifies the violation, is kept whole."""
    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return f"{value[:limit]}... ({len(value):,} characters)"
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    return {k: (v if k == "fingerprint" else cut(v)) for k, v in sample.items()}


def render_json(report: CheckReport) -> str:
    return json.dumps(to_json_data(report), indent=2, default=str)


def render_junit(report: CheckReport) -> str:
    """One testcase per rule; a blocking rule fails (or errors); a non-blocking finding is a note.

    A skipped rule blocks the gate (it could not be checked), so it is an ``<error>``, not a JUnit
    ``<skipped>`` that CI dashboards would show as harmless."""
    suites = ET.Element("testsuites", name="integrity", tests=str(len(report.results)), time=f"{report.seconds:.3f}")
    suite = ET.SubElement(
        suites, "testsuite", name="integrity check", tests=str(len(report.results)),
        failures=str(sum(1 for r in report.results if r.status == "failed" and r.blocks(report.fail_on))),
        errors=str(sum(1 for r in report.results if r.status in ("error", "skipped"))),
        skipped="0",
        time=f"{report.seconds:.3f}", timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(report.started_at)))
    for result in report.results:
        case = ET.SubElement(suite, "testcase", classname=f"integrity.{result.rule.severity.name}",
                             name=result.rule.id, time=f"{result.seconds:.3f}")
        lines = [f"{_key(v)}: {printable(v.message)}" for v in result.samples]
        body = "\n".join(lines + ([f"... and {result.count - len(lines)} more"] if result.count > len(lines) else []))
        if result.status == "error":
            ET.SubElement(case, "error", message=printable(result.error), type="RuleError").text = printable(result.error, 2000)
        elif result.status == "skipped":
            ET.SubElement(case, "error", message=printable(f"skipped: {result.reason}"),
                          type="RuleSkipped").text = printable(result.reason, 2000)
        elif result.status == "failed" and result.blocks(report.fail_on):
            ET.SubElement(case, "failure", message=f"{result.count} violation(s): {result.rule.description}",
                          type=result.rule.severity.name).text = body
        elif result.status == "failed":
            ET.SubElement(case, "system-out").text = f"{result.count} violation(s) below fail-on {report.fail_on.name}\n{body}"
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)


def _location(result: RuleResult, violation: Violation) -> dict[str, Any]:
    database = violation.key.get("database") or result.rule.databases[0]
    key = printable(", ".join(f"{k}={printable(v, 200)}" for k, v in violation.key.items() if k != "database"), 1000)
    return {
        "physicalLocation": {"artifactLocation": {"uri": f"{database}.db", "uriBaseId": "DATADIR"}},
        "logicalLocations": [{"name": key or database, "fullyQualifiedName": f"{database}:{result.rule.id}[{key}]",
                              "kind": "object"}],
    }


def render_sarif(report: CheckReport) -> str:
    """SARIF 2.1.0: one reportingDescriptor per rule, one result per sampled violation."""
    rules = []
    index: dict[str, int] = {}
    for position, result in enumerate(report.results):
        index[result.rule.id] = position
        rules.append({
            "id": result.rule.id,
            "name": "".join(part.capitalize() for part in result.rule.id.split("_")),
            "shortDescription": {"text": result.rule.description},
            "defaultConfiguration": {"level": _SARIF_LEVEL[result.rule.severity]},
            "properties": {"severity": result.rule.severity.name, "databases": list(result.rule.databases),
                           "repairable": result.rule.repairable},
        })
    results = []
    notifications = []
    for result in report.results:
        for violation in result.samples:
            item: dict[str, Any] = {
                "ruleId": result.rule.id,
                "ruleIndex": index[result.rule.id],
                "level": _SARIF_LEVEL[result.rule.severity],
                "message": {"text": printable(violation.message, 1000) or result.rule.description},
                "locations": [_location(result, violation)],
                "partialFingerprints": {"toolkitViolation/v1": violation.fingerprint},
            }
            extras = {k: v for k, v in violation.to_dict().items() if k in ("stored", "computed", "difference", "tolerance")}
            if extras:
                item["properties"] = extras
            results.append(item)
        if result.status in ("error", "skipped"):
            notifications.append({
                "level": "error",
                "message": {"text": printable(f"{result.rule.id} {result.status}: {result.error or result.reason}", 1000)},
                # `descriptor` would index tool.driver.notifications; the rule is the associatedRule
                "associatedRule": {"id": result.rule.id, "index": index[result.rule.id]},
            })
    sarif = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": TOOL_NAME, "version": __version__, "informationUri": TOOL_URI, "rules": rules}},
            "automationDetails": {"id": f"integrity-check/{report.run_id}"},
            "originalUriBaseIds": {"DATADIR": {"uri": _dir_uri(report.data_dir)}},
            "invocations": [{
                "executionSuccessful": not any(r.status in ("error", "skipped") for r in report.results),
                "exitCode": report.exit_code,
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
            "properties": {"failOn": report.fail_on.name,
                           "counts": {r.rule.id: r.count for r in report.results},
                           "baselined": {r.rule.id: r.baselined for r in report.results if r.baselined}},
        }],
    }
    return json.dumps(sarif, indent=2, default=str)


def _dir_uri(path: str) -> str:
    from pathlib import Path

    return Path(path).resolve().as_uri() + "/"


def render_markdown(report: CheckReport) -> str:
    from tabulate import tabulate

    verdict = "❌ failed" if report.blocking else "✅ passed"
    lines = [f"## Integrity check {verdict}", "",
             f"`{report.run_id}` · fail-on **{report.fail_on.name}** · {report.violations} violation(s) · {report.seconds:.2f} s", ""]
    lines.append(tabulate([[_outcome(r, report), f"`{r.rule.id}`", r.rule.severity.name, r.count, r.baselined or "",
                            _md(_detail(r))] for r in report.results],
                          headers=["", "rule", "severity", "count", "baselined", "description"], tablefmt="github",
                          disable_numparse=True))
    for result in report.results:
        if result.samples:
            lines += ["", f"<details><summary><code>{result.rule.id}</code>: {result.count} violation(s)</summary>", ""]
            lines.append(tabulate([[_md(_key(v)), _md(_fmt(v.stored)), _md(_fmt(v.computed)), _fmt(v.difference),
                                    _md(printable(v.message))]
                                   for v in result.samples],
                                  headers=["key", "stored", "computed", "difference", "message"], tablefmt="github",
                                  disable_numparse=True))
            lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


FORMATS: dict[str, Callable[[CheckReport], str]] = {
    "table": render_table,
    "json": render_json,
    "junit": render_junit,
    "sarif": render_sarif,
    "markdown": render_markdown,
}


def render(report: CheckReport, fmt: str) -> str:
    return FORMATS[fmt](report)


# -- repair plans and results ----------------------------------------------------------------------

def plan_data(plan: Any) -> dict[str, Any]:
    """A repair plan or result as JSON-ready data (the same shape for both)."""
    data: dict[str, Any] = {"schema_version": JSON_SCHEMA_VERSION, "data_dir": plan.data_dir}
    for name in ("run_id", "seconds"):
        if hasattr(plan, name):
            data[name] = getattr(plan, name)
    if hasattr(plan, "backups"):
        data["backups"] = [str(b.path) for b in plan.backups]
    data["rules"] = [
        {
            "id": r.rule.id,
            "status": r.status,
            "violations": r.violations,
            "changes": dict(r.changes),
            "untouched": r.untouched,
            "reason": r.reason,
            "rolled_back": getattr(r, "rolled_back", None),
            "samples": [{"op": c.op, "database": c.database, "table": c.table, "key": c.key, "before": c.before,
                         "after": c.after, "repairs": c.repairs} for c in r.samples],
            "untouched_samples": [{"key": u.key, "reason": u.reason} for u in r.untouched_samples],
        }
        for r in plan.rules
    ]
    return data


def _repair_table(plan: Any, sample_changes: bool) -> list[str]:
    from tabulate import tabulate

    rows = [[r.rule.id, r.status, r.violations, r.changes.get("update", 0), r.changes.get("insert", 0),
             r.changes.get("delete", 0), r.untouched, printable(getattr(r, "rolled_back", None) or r.reason or "", 80)]
            for r in plan.rules if r.status != "nothing"]
    if not rows:
        return ["nothing to repair: every rule is clean"]
    lines = [tabulate(rows, headers=["rule", "status", "violations", "update", "insert", "delete", "untouched", "note"],
                      tablefmt="simple", disable_numparse=True)]
    if sample_changes:
        for r in plan.rules:
            if not (r.samples or r.untouched_samples):
                continue
            lines.append(f"\n{r.rule.id}:")
            lines += [f"  {c.describe()}" for c in r.samples]
            if r.total_changes > len(r.samples):
                lines.append(f"  ... and {r.total_changes - len(r.samples)} more change(s)")
            lines += [f"  will not touch {printable(', '.join(f'{k}={printable(v, 80)}' for k, v in u.key.items()))}: "
                      f"{printable(u.reason)}" for u in r.untouched_samples]
    return lines


def render_plan(plan: Any, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(plan_data(plan), indent=2, default=str)
    lines = _repair_table(plan, True)
    lines.append(f"\nplan: {plan.total_changes} row change(s); nothing was changed. "
                 "Apply with `integrity repair --apply`.")
    return "\n".join(lines)


def render_repair(result: Any, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(plan_data(result), indent=2, default=str)
    lines = _repair_table(result, True)
    rolled = result.rolled_back
    failed = [r for r in result.incomplete if r not in rolled]
    lines.append(f"\nrepair {result.run_id}: {result.applied_changes} row change(s) applied and verified"
                 + (f", {len(rolled)} rule(s) rolled back" if rolled else "")
                 + (f", {len(failed)} rule(s) not repaired ({', '.join(f'{r.rule.id}: {r.status}' for r in failed)})"
                    if failed else "") + f" ({result.seconds:.2f} s)")
    if result.applied_changes:
        lines.append(f"undo with `integrity repair undo {result.run_id}`")
    return "\n".join(lines)
