"""Symbols as configuration (``symbol-pattern``): one grammar for the trade writer, the ticker guard and
``trade_row_invalid``; presets; custom patterns validated at load; the floor no grammar lowers."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dbstate import content_hashes
from toolkit.config import load_settings
from toolkit.domain import is_plausible_symbol, is_plausible_ticker, symbol_checker, trade_problems
from toolkit.errors import GuardrailViolation, LedgerError, UsageError
from toolkit.guard.connection import connect_guarded
from toolkit.ledger import TradeStore
from toolkit.symbols import HOSTILE_SYMBOLS, MAX_SYMBOL_LENGTH, PRESET_EXAMPLES, PRESETS, SymbolGrammar, compile_symbol_pattern

T0 = 1_735_828_200

DEFAULT_ACCEPTS = ["AAPL", "BRK.B", "BF-B", "BTCUSDT", "BTC-USD", "BTC/USDT", "EUR/USD", "ES=F", "7203.T",
                   "0x1a2b3c4d5e6f7a8b9c", "will-x-happen-2026", "brk.b", "A" * MAX_SYMBOL_LENGTH]
#: What every grammar refuses: the floor (``toolkit.symbols.floor_problem``) comes before the pattern.
ALWAYS_REFUSED = ["", " ", " AAPL", "AAPL ", "AAPL\n", "A B", "A\tB", "A\x00", "A\x1b", "AAPL\u200b", "A'B", "'",
                  'A"B', "A`B", "A;B", "A\\B", "AAPL'; DROP TABLE trades; --", "A" * (MAX_SYMBOL_LENGTH + 1),
                  "A" * 65, None, 5, b"AAPL"]


def _pyproject(where: Path, pattern: str) -> None:
    (where / "pyproject.toml").write_text(f"[tool.toolkit]\nsymbol-pattern = {json.dumps(pattern)}\n", encoding="utf-8")


# -- the grammar ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("symbol", DEFAULT_ACCEPTS)
def test_the_default_accepts_equity_crypto_fx_futures_and_prediction_market_symbols(symbol: str) -> None:
    assert is_plausible_ticker(symbol) and symbol_checker().accepts(symbol)
    assert trade_problems(symbol, "BUY", 1.0, 10.0, 0.0, T0, "r") == []


@pytest.mark.parametrize("symbol", ALWAYS_REFUSED + list(HOSTILE_SYMBOLS), ids=repr)
def test_the_default_refuses_the_hostile_list(symbol: object) -> None:
    assert not is_plausible_ticker(symbol)
    [problem] = trade_problems(symbol, "BUY", 1.0, 10.0, 0.0, T0, "r")
    assert problem.startswith(f"ticker {symbol!r} is not a plausible symbol: ") and "\n" not in problem


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_accepts_and_refuses_its_examples(preset: str) -> None:
    accepted, refused = PRESET_EXAMPLES[preset]
    grammar = compile_symbol_pattern(preset)
    assert [s for s in accepted if not grammar.accepts(s)] == []
    assert [s for s in refused if grammar.accepts(s)] == []
    assert [s for s in ALWAYS_REFUSED if grammar.accepts(s)] == []   # no preset lowers the floor
    assert load_settings("data", env={}, symbol_pattern=preset).symbol_pattern == preset


def test_equity_is_the_grammar_from_before_symbols_were_a_setting() -> None:
    for symbol in ("BTCUSDT", "EUR/USD", "ES=F", "7203.T", "brk.b", "ATTACK1"):
        assert not is_plausible_symbol(symbol, "equity")
    assert is_plausible_symbol("BRK.B", "equity") and is_plausible_symbol("BF-B", "equity")


def test_the_floor_holds_whatever_the_pattern() -> None:
    """A custom pattern is checked against the hostile list at load; and were one to slip through, the
    floor (checked before the pattern) still refuses what is never a symbol."""
    with pytest.raises(ValueError, match="accepts 'A B'"):
        compile_symbol_pattern(r"[A-Z]{1,8}(?:[ ][A-Z]{1,8})?")
    anything = SymbolGrammar("custom", r"(?s).*", re.compile(r"(?s).*"))
    assert [s for s in ALWAYS_REFUSED if anything.accepts(s)] == []
    assert anything.accepts("x(1)") and is_plausible_symbol("x(1)", "any")


# -- settings: precedence and refusal at load --------------------------------------------------------

def test_option_then_environment_then_pyproject_then_default(tmp_path: Path) -> None:
    assert load_settings("data", cwd=tmp_path, env={}).symbol_pattern == "default"
    _pyproject(tmp_path, "crypto")
    assert load_settings("data", cwd=tmp_path, env={}).symbol_pattern == "crypto"
    assert load_settings("data", cwd=tmp_path, env={"TOOLKIT_SYMBOL_PATTERN": "fx"}).symbol_pattern == "fx"
    assert load_settings("data", cwd=tmp_path, env={"TOOLKIT_SYMBOL_PATTERN": "fx"},
                         symbol_pattern="futures").symbol_pattern == "futures"


BAD_PATTERNS = {
    "(": "not a regular expression",
    "": "a preset",
    ".*": "accepts ''",
    "[A-Z]*": "accepts ''",
    "[A-Z ]{1,8}": "accepts ' '",
    "[A-Z']{1,8}": "accepts \"A'\"",
    "[A-Z;]{1,8}": "accepts 'A;B'",
    "[A-Z]+": "longer than 32 characters",
    r"\S{1,32}": "accepts 'A\\x00'",
}


@pytest.mark.parametrize("pattern", list(BAD_PATTERNS))
def test_a_bad_pattern_is_refused_at_load(tmp_path: Path, pattern: str) -> None:
    _pyproject(tmp_path, pattern)
    with pytest.raises(UsageError) as info:
        load_settings("data", cwd=tmp_path, env={})
    message = str(info.value)
    assert message.startswith("symbol-pattern ") and BAD_PATTERNS[pattern] in message, message
    assert "(from pyproject.toml)" in message and "\n" not in message
    with pytest.raises(UsageError, match=r"\(from \$TOOLKIT_SYMBOL_PATTERN\)"):
        load_settings("data", cwd=tmp_path / "elsewhere", env={"TOOLKIT_SYMBOL_PATTERN": pattern or "("})


@pytest.mark.parametrize("setting", ['symbol-pattern = "("', 'symbol-pattern = ".*"', 'symbol-pattern = "[A-Z ]{1,8}"',
                                     "symbol-pattern = \"[A-Z']{1,8}\"", "symbol-pattern = 5"],
                         ids=["unbalanced", "matches-empty", "matches-space", "matches-quote", "not-a-string"])
def test_a_bad_pattern_in_pyproject_stops_the_cli_with_one_line(cli, migrated, setting: str) -> None:
    project = migrated.data_dir.parent
    (project / "pyproject.toml").write_text(f"[tool.toolkit]\n{setting}\n", encoding="utf-8")
    before = content_hashes(migrated)
    result = cli("integrity", "--data-dir", str(migrated.data_dir), "check", cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "symbol-pattern" in lines[0] and "pyproject.toml" in lines[0], lines[0]
    assert content_hashes(migrated) == before


def test_a_bad_symbol_pattern_option_is_refused(cli, migrated) -> None:
    result = cli("integrity", "--data-dir", str(migrated.data_dir), "--symbol-pattern", "[A-Z ]+", "check",
                 cwd=migrated.data_dir.parent)
    assert result.returncode == 2 and "symbol-pattern" in result.stderr and "(from option)" in result.stderr


# -- the writer: accepted with the default, refusals write nothing ------------------------------------

def test_the_writer_accepts_non_equity_symbols_with_the_default(migrated) -> None:
    with TradeStore(migrated) as store:
        store.open_account(1_000_000.0, at=T0)
        for n, symbol in enumerate(["BTCUSDT", "EUR/USD", "ES=F", "7203.T", "BTC-USD", "will-x-happen-2026", "brk.b"]):
            store.buy(symbol, 2.0, 10.0, run_id="r", executed_at=T0 + n)
            result = store.sell(symbol, 1.0, 12.0, run_id="r", executed_at=T0 + n)
            assert result.realized_pnl == pytest.approx(2.0)
        assert {p.ticker for p in store.open_positions()} >= {"BTCUSDT", "EUR/USD", "ES=F", "7203.T", "brk.b"}


@pytest.mark.parametrize("symbol", ["AAPL\n", "", "A'B", "A" * 33, "A B", "AAPL;", " AAPL"], ids=repr)
def test_the_writer_refuses_with_one_line_and_writes_nothing(migrated, symbol: str) -> None:
    with TradeStore(migrated) as store:
        store.open_account(100_000.0, at=T0)
        store.buy("AAPL", 1.0, 10.0, run_id="r", executed_at=T0)
        before = content_hashes(migrated)
        with pytest.raises(LedgerError) as info:
            store.buy(symbol, 1.0, 10.0, run_id="r", executed_at=T0 + 1)
    assert f"ticker {symbol!r} is not a plausible symbol" in str(info.value) and "\n" not in str(info.value)
    assert content_hashes(migrated) == before


# -- one grammar end to end: a custom pattern ------------------------------------------------------

CUSTOM = r"[a-z]{1,10}#[0-9]{1,6}"   # neither the default nor any preset accepts "poly#123"


def _insert(conn, ticker: str) -> None:
    values = {"trade_id": 999_999, "run_id": "bot-run", "ticker": ticker, "action": "BUY", "quantity": 1.0,
              "price": 50.0, "commission": 0.0, "executed_at": 2_000_000_000, "is_close": 0, "status": "OPEN"}
    with conn.trusted("the trade writer"):
        conn.execute("BEGIN")
        try:
            conn.execute(f"INSERT INTO trading.trades ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                         tuple(values.values()))
        finally:
            conn.execute("ROLLBACK")


def _gate(cli, settings, cwd: Path, *options: str) -> tuple[int, list[dict]]:
    result = cli("integrity", "--data-dir", str(settings.data_dir), *options, "check", "--rule", "trade_row_invalid",
                 "--format", "json", cwd=cwd)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def test_a_custom_pattern_works_end_to_end(cli, migrated, tmp_path: Path) -> None:
    project = migrated.data_dir.parent
    _pyproject(project, CUSTOM)
    settings = load_settings(migrated.data_dir, cwd=project, env={})
    assert symbol_checker(settings).name == "custom"
    with TradeStore(settings) as store:   # the writer
        store.open_account(10_000.0, at=T0)
        store.buy("poly#123", 10.0, 0.4, run_id="r", executed_at=T0)
        store.sell("poly#123", 4.0, 0.6, run_id="r", executed_at=T0 + 1)
        with pytest.raises(LedgerError, match="does not match symbol-pattern"):
            store.buy("AAPL", 1.0, 10.0, run_id="r", executed_at=T0 + 2)
    conn = connect_guarded(settings)      # the guard: built from the connection's settings
    try:
        _insert(conn, "poly#777")
        with pytest.raises(GuardrailViolation, match="not a plausible symbol"):
            _insert(conn, "AAPL")
    finally:
        conn.close()
    conn = connect_guarded(migrated)      # the default grammar on another connection of the same process
    try:
        with pytest.raises(GuardrailViolation, match="not a plausible symbol"):
            _insert(conn, "poly#777")
        _insert(conn, "AAPL")
    finally:
        conn.close()
    # the rule: the gate passes with the project's pattern, and reports the trades without it
    code, report = _gate(cli, settings, project)
    assert code == 0 and _violations(report) == [], report
    elsewhere = tmp_path / "elsewhere"   # no pyproject.toml there: the default grammar
    elsewhere.mkdir()
    code, report = _gate(cli, settings, elsewhere)
    assert code == 1 and len(_violations(report)) == 2
    assert all("'poly#123' is not a plausible symbol: does not match symbol-pattern default" in v["message"]
               for v in _violations(report))
    code, report = _gate(cli, settings, elsewhere, "--symbol-pattern", CUSTOM)
    assert code == 0 and _violations(report) == []


def _violations(report: dict) -> list[dict]:
    """The trade_row_invalid samples of an ``integrity check --format json`` report (its count agrees)."""
    [rule] = [r for r in report["rules"] if r["id"] == "trade_row_invalid"]
    assert rule["count"] == len(rule["samples"]) and rule["error"] is None, rule
    return rule["samples"]
