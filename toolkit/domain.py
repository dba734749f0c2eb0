"""What a single value of the ledger may be: a plausible ticker, a finite positive price, a run id.

One definition shared by the trade writer (refuses), the guarded connection (refuses) and the
``trade_row_invalid`` rule (detects).
"""
from __future__ import annotations

import math
import re

__all__ = ["TICKER_PATTERN", "is_plausible_ticker", "trade_problems", "is_finite_number", "average_reward"]

#: US-listed symbols and share classes: ``AAPL``, ``BRK.B``, ``BF-B``.
TICKER_PATTERN = r"^[A-Z]{1,5}(?:[.-][A-Z]{1,2})?$"
_TICKER = re.compile(TICKER_PATTERN)


def is_plausible_ticker(value: object) -> bool:
    return isinstance(value, str) and _TICKER.match(value) is not None


def is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trade_problems(
    ticker: object,
    action: object,
    quantity: object,
    price: object,
    commission: object,
    executed_at: object,
    run_id: object,
) -> list[str]:
    """Why a trade's executed facts are not acceptable (empty when they are)."""
    problems = []
    if not is_plausible_ticker(ticker):
        problems.append(f"ticker {ticker!r} is not a plausible symbol (expected e.g. AAPL, BRK.B)")
    if action not in ("BUY", "SELL"):
        problems.append(f"action must be BUY or SELL, got {action!r}")
    if not is_finite_number(quantity) or quantity <= 0:
        problems.append(f"quantity must be a finite number > 0, got {quantity!r}")
    if not is_finite_number(price) or price <= 0:
        problems.append(f"price must be a finite number > 0, got {price!r}")
    if not is_finite_number(commission) or commission < 0:
        problems.append(f"commission must be a finite number >= 0, got {commission!r}")
    if not isinstance(executed_at, int) or isinstance(executed_at, bool) or executed_at < 0:
        problems.append(f"executed_at must be a Unix epoch integer, got {executed_at!r}")
    if not isinstance(run_id, str) or not run_id.strip():
        problems.append(f"run_id must name the session that produced the trade, got {run_id!r}")
    return problems


def average_reward(total_rewards: float, total_episodes: int) -> float:
    """The ``avg_reward`` an RL model state must carry in its hyperparameters (seed 000, finding 6)."""
    return round(total_rewards / max(total_episodes, 1), 4)
