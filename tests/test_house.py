"""The shape of the house: the engine imports no content, no import circles, small modules, and a
trade writer that needs nothing but the ledger's own guards.

The import graph is read from the source with ``ast`` (every import, at module level or inside a
function, ``TYPE_CHECKING`` blocks included), so it sees what a reader sees.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toolkit.config import load_settings
from toolkit.content import load_migrations, load_registry
from toolkit.domain import LEDGER_GUARDS
from toolkit.errors import GuardrailViolation
from toolkit.guard.connection import connect_guarded
from toolkit.ledger import TradeStore
from toolkit.migrate.runner import upgrade

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "toolkit"
CONTENT = ("toolkit.checks", "toolkit.fixtures", "toolkit.migrations", "checks", "fixtures", "migrations")
#: The composition root: it finds the content and hands it to the engine.
ROOT = ("toolkit.cli", "toolkit.content", "toolkit.pytest_plugin", "toolkit.__main__")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, resolved to dotted names (``from . import x`` -> package.x)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ENGINE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_engine_imports_no_content_and_not_the_composition_root() -> None:
    offenders = []
    for path in ENGINE.rglob("*.py"):
        name = _module_name(path)
        if _in(name, ROOT):
            continue
        text = path.read_text(encoding="utf-8")
        if "import_module" in text or "__import__" in text:
            offenders += [f"{name} imports by name: {line.strip()}" for line in text.splitlines()
                          if "import_module(" in line and name != "toolkit._lazy"]
        for target in _imports(path):
            if _in(target, CONTENT) or _in(target, ROOT):
                offenders.append(f"{name} imports {target}")
        for line in text.splitlines():
            if "import" in line and any(f'"{c}' in line or f"'{c}" in line for c in CONTENT[:3]):
                offenders.append(f"{name} imports content by a string: {line.strip()}")
    assert offenders == []


def test_there_are_no_import_circles() -> None:
    graph = _graph()
    # Tarjan's strongly connected components: a component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert circles == []


def test_no_engine_module_is_over_500_lines() -> None:
    sizes = {_module_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in ENGINE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 500} == {}


def test_only_the_transaction_helper_begins_transactions() -> None:
    """Every transaction and savepoint is opened by ``toolkit.db.atomic``. The one deliberate exception
    is the rollback-only session and the harness's per-attack savepoints inside it: they must never
    commit or release, only roll back, which is what the guard's own code there enforces."""
    allowed = {"toolkit.db", "toolkit.guard.connection", "toolkit.guard.harness"}
    offenders = []
    for path in ENGINE.rglob("*.py"):
        name = _module_name(path)
        if name in allowed:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"""execute\(\s*f?["'](BEGIN|SAVEPOINT|COMMIT|ROLLBACK|RELEASE|END)\b""", line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == []


# -- a writer that stands alone ----------------------------------------------------------------------

@pytest.fixture
def ledger_dir(tmp_path: Path):
    settings = load_settings(tmp_path / "data", cwd=tmp_path, env={})
    upgrade(settings, migrations=load_migrations(settings))
    return settings


def test_a_broken_checks_dir_cannot_stop_a_trade(ledger_dir, tmp_path: Path) -> None:
    broken = tmp_path / "rules"
    broken.mkdir()
    (broken / "oops.py").write_text("raise RuntimeError('a broken project rule')\n", encoding="utf-8")
    settings = ledger_dir.with_(checks_dirs=(broken,))
    with pytest.raises(Exception, match="a broken project rule"):
        load_registry(settings)  # the gate refuses the broken file...
    with TradeStore(settings) as store:  # ...the writer never reads it
        store.open_account(10_000.0, at=1)
        store.buy("AAPL", 10.0, 100.0, run_id="s1", executed_at=2)
        result = store.sell("AAPL", 4.0, 110.0, run_id="s1", executed_at=3)
    assert result.realized_pnl == pytest.approx(40.0)


def test_the_writer_loads_no_rule_catalogue(ledger_dir) -> None:
    code = textwrap.dedent(f"""
        import sys
        from toolkit.config import load_settings
        from toolkit.ledger import TradeStore
        with TradeStore(load_settings({str(ledger_dir.data_dir)!r}, env={{}})) as store:
            store.open_account(1000.0, at=1)
            store.buy("MSFT", 1.0, 10.0, run_id="s", executed_at=2)
        loaded = sorted(m for m in sys.modules if m.startswith(("toolkit.checks", "toolkit.rules", "toolkit.fixtures",
                                                                   "toolkit.content", "sqlglot", "sqlite_utils")))
        print(loaded)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ledger_dir.data_dir.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_guarded_connection_carries_the_ledger_guards_by_default(ledger_dir) -> None:
    assert {g.rule_id for g in LEDGER_GUARDS} == {"opening_leg_with_pnl", "trade_row_invalid"}
    conn = connect_guarded(ledger_dir)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_temp_master WHERE type = 'trigger'")}
        assert {n for n in names if n.startswith("guard_opening_leg_with_pnl")}
        assert not {n for n in names if n.startswith("guard_snapshot_equity_mismatch")}
        with conn.trusted("test"), pytest.raises(GuardrailViolation, match="opening leg"):
            conn.execute("INSERT INTO trading.trades (trade_id, run_id, ticker, action, quantity, price, commission, "
                         "executed_at, is_close, status, realized_pnl) VALUES (1, 'r', 'AAPL', 'BUY', 1, 1, 0, 1, 0, 'OPEN', 5)")
    finally:
        conn.close()
    everything = connect_guarded(ledger_dir, guards=load_registry(ledger_dir, plugins=False).guards)
    try:
        names = {r[0] for r in everything.execute("SELECT name FROM sqlite_temp_master WHERE type = 'trigger'")}
        assert {n for n in names if n.startswith("guard_snapshot_equity_mismatch")}
    finally:
        everything.close()
