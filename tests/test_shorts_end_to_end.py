"""Issue 12's "done when", end to end on real files: a crypto session with shorts and flips written
through the TradeStore passes the gate with 0 violations; the same session with injected short-side
defects is found exactly, and `integrity repair --apply` brings it back to the clean ledger."""
from __future__ import annotations

import random

import pytest

from dbstate import content_hashes, query
from toolkit.config import load_settings
from toolkit.content import load_migrations, load_registry
from toolkit.fixtures.generate import fingerprint
from toolkit.fixtures.defects import inject_defects
from toolkit.ledger import CLOSE_REASONS, TradeStore
from toolkit.migrate.runner import upgrade
from toolkit.repair import apply_repairs
from toolkit.rules import run_checks

REGISTRY = load_registry(plugins=False)
T0 = 1_767_225_600
PRICES = {"BTCUSDT": 97_000.0, "ETH-USD": 3_400.0, "SOL/USDT": 180.0, "EUR/USD": 1.08, "ES=F": 6_000.0}
SIZES = {"BTCUSDT": 0.05, "ETH-USD": 1.5, "SOL/USDT": 40.0, "EUR/USD": 50_000.0, "ES=F": 2.0}


def write_through_the_store(settings, *, trades: int = 700, seed: int = 12) -> dict:
    """A seed-002-like bot: random long and short entries, partial and whole exits, flips, fees,
    funding, stops moved and marks set — every write through the TradeStore."""
    rng = random.Random(seed)
    counts = {"flips": 0, "covers": 0, "short_sales": 0}
    with TradeStore(settings) as store:
        store.open_account(5_000_000.0, at=T0)
        t = T0
        prices = dict(PRICES)
        for _ in range(trades):
            ticker = rng.choice(list(PRICES))
            prices[ticker] *= 1 + rng.uniform(-0.01, 0.01)
            price = round(prices[ticker], 6)
            t += rng.randint(0, 90)
            held: dict[str, float] = {}
            for lot in store.open_lots(ticker):
                held[lot.side] = held.get(lot.side, 0.0) + lot.remaining
            action = rng.choice(("BUY", "SELL"))
            other = "short" if action == "BUY" else "long"
            if held.get(other) and rng.random() < 0.7:      # an exit: part, all, or beyond (a flip)
                quantity = held[other] * rng.choice((0.25, 0.5, 1.0, 1.0, 1.6))
            else:
                quantity = SIZES[ticker] * rng.uniform(0.1, 1.0)
            quantity = round(quantity, 8) or SIZES[ticker]
            closes = bool(held.get(other))
            result = store.record(ticker, action, quantity, price, run_id=f"tradestore-{seed}",
                                  commission=round(quantity * price * 0.0004, 8), executed_at=t,
                                  strategy=rng.choice(("breakout", "mean_reversion")),
                                  close_reason=rng.choice(CLOSE_REASONS[:5]) if closes else None)
            counts["flips"] += result.flip
            counts["covers"] += action == "BUY" and closes
            counts["short_sales"] += action == "SELL" and not held.get("long")
            if result.position is not None and rng.random() < 0.3:
                side, entry = result.position.side, result.position.entry_price
                store.update_position(ticker, side, stop_loss_price=entry * (1.02 if side == "short" else 0.98),
                                      trail_percent=1.5, current_price=price, metadata={"leverage": 3}, at=t)
            if rng.random() < 0.05:
                store.record_cost(round(rng.uniform(-2, 10), 4) or 1.0, "funding", ticker=ticker, at=t)
    return counts


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("tradestore")
    settings = load_settings(root / "data", cwd=root, env={})
    upgrade(settings, migrations=load_migrations(settings))
    counts = write_through_the_store(settings)
    return settings, counts


def ledger_columns(settings) -> tuple[list, list]:
    """What positions.db projects from the ledger: open positions and closed lots, without the bot's labels."""
    return (query(settings, "positions", "SELECT ticker, side, round(quantity, 9), round(entry_price, 6), opened_at "
                                         "FROM positions ORDER BY ticker, side"),
            query(settings, "positions", "SELECT entry_trade_id, ticker, side, round(quantity, 9), round(entry_price, 6), "
                                         "round(exit_price, 6), round(realized_pnl, 6), closed_at, round(commission, 9) "
                                         "FROM closed_positions ORDER BY entry_trade_id"))


def _found(report) -> dict[str, set[str]]:
    return {r.rule.id: set(r.fingerprints) for r in report.results if r.fingerprints}


def test_a_crypto_session_with_shorts_and_flips_written_by_the_store_passes_the_gate(clean):
    settings, counts = clean
    assert counts["flips"] >= 10 and counts["covers"] >= 50 and counts["short_sales"] >= 50, counts
    report = run_checks(settings, registry=REGISTRY, collect=True)
    assert _found(report) == {}
    assert all(r.status == "passed" for r in report.results), [(r.rule.id, r.status, r.reason) for r in report.results]


#: Short-side defects of every ledger rule that has a repair; unsplit_flips has none (a person splits the row).
REPAIRABLE = {"unlinked_closes:short": 2, "realized_pnl_mismatch:short": 2, "lot_status_inconsistent:short": 2,
              "position_ledger_mismatch:short": 1, "closed_position_mismatch:short": 2, "close_flag_mismatch:short": 1}


def test_short_side_defects_are_found_exactly_and_repaired_back_to_the_clean_ledger(clean, tmp_path):
    import shutil

    source, _ = clean
    settings = load_settings(tmp_path / "data", cwd=tmp_path, env={})
    shutil.copytree(source.data_dir, settings.data_dir)
    before = content_hashes(settings, ("trading",))
    projection = ledger_columns(settings)
    injected = inject_defects(settings, REPAIRABLE, seed=3)
    expected = {rule: {fingerprint(rule, key) for key in keys} for rule, keys in injected.items() if keys}
    assert {r.split(":")[0] for r in REPAIRABLE} <= set(expected)
    report = run_checks(settings, registry=REGISTRY, collect=True)
    assert _found(report) == expected

    result = apply_repairs(settings, registry=REGISTRY)
    assert result.incomplete == [] and result.rolled_back == [], result.rules
    assert result.applied_changes > 0
    assert _found(run_checks(settings, registry=REGISTRY, collect=True)) == {}
    assert content_hashes(settings, ("trading",)) == before
    # positions.db is the ledger's projection again; what only the bot knew of a row the defect deleted (its
    # stop, trail, metadata, exit reason) cannot come back from the ledger
    assert ledger_columns(settings) == projection


def test_a_stored_one_row_flip_is_found_and_left_for_a_person(clean, tmp_path):
    import shutil

    source, _ = clean
    settings = load_settings(tmp_path / "data", cwd=tmp_path, env={})
    shutil.copytree(source.data_dir, settings.data_dir)
    injected = inject_defects(settings, {"unsplit_flips": 1}, seed=5)
    report = run_checks(settings, registry=REGISTRY, collect=True)
    assert _found(report).get("unsplit_flips") == {fingerprint("unsplit_flips", key) for key in injected["unsplit_flips"]}
