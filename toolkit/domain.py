"""What a single value of the ledger may be: a plausible ticker, a finite positive price within the
ledger's bounds (:data:`MAX_AMOUNT`, :data:`MAX_EPOCH`), a run id; and the row invariants that
protect it (:class:`Guard`), the ledger's own among them.

One definition shared by the trade writer (refuses), the guarded connection (refuses: the ledger's
own row guards, :data:`LEDGER_GUARDS`, and that ledger rows are never deleted, :data:`NO_DELETE`),
the session fixtures (refuse), the ``trade_row_invalid``, ``bankroll_mismatch`` and ledger-scan rules
(detect) and the repairs (never write an amount outside the bounds).

Guards are values. The rule that detects a breach declares the guard that prevents it (its
``rule_id``), and whoever opens a guarded connection chooses which to install: the trade writer only
the ledger's, the adversarial harness and the pytest fixture the whole catalogue's.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .accounting import same_quantity
from .symbols import DEFAULT_SYMBOL_PATTERN, SymbolGrammar, compile_symbol_pattern, grammar

__all__ = [
    "Guard",
    "NO_DELETE",
    "LEDGER_GUARDS",
    "OPENING_LEG_GUARD",
    "RUN_ID_GUARD",
    "TICKER_GUARD",
    "TICKER_PATTERN",
    "is_plausible_ticker",
    "is_plausible_symbol",
    "symbol_checker",
    "trade_problems",
    "is_finite_number",
    "MAX_AMOUNT",
    "MAX_EPOCH",
    "is_amount",
    "amount_problem",
    "epoch_problem",
    "BOUNDS",
    "amount_problem_sql",
    "average_reward",
    "state_key_problem",
    "parse_state_key",
    "MAX_STATE_KEY_LENGTH",
]

#: A Q-table state key longer than this is refused before it is even parsed.
MAX_STATE_KEY_LENGTH = 512

#: The default instrument grammar (``toolkit.symbols``: the ``symbol-pattern`` setting, its presets and
#: the floor every grammar shares): ``AAPL``, ``BRK.B``, ``BTCUSDT``, ``BTC-USD``, ``EUR/USD``, ``ES=F``,
#: ``7203.T``, ``0x1a2b3c``, ``will-x-happen-2026``; 1 to 32 characters, case significant.
TICKER_PATTERN = DEFAULT_SYMBOL_PATTERN


def is_plausible_ticker(value: object) -> bool:
    """A symbol of the default grammar (``symbol-pattern = "default"``)."""
    return grammar().accepts(value)


def is_plausible_symbol(value: object, pattern: str = "default") -> bool:
    """A symbol of ``pattern``: a preset name or a custom regular expression (validated as at load)."""
    return compile_symbol_pattern(pattern).accepts(value)


def symbol_checker(settings: object = None) -> SymbolGrammar:
    """The grammar configured in ``settings`` (``symbol_pattern``), the default one without settings:
    ``.accepts(value)``, ``.problem(value)`` (why not, or ``None``)."""
    return grammar(settings)


#: Ledger rows are never deleted, not even by trusted code (the writer, repairs).
NO_DELETE = frozenset({("trading", "trades"), ("trading", "lot_matches"), ("trading", "account_adjustments")})


@dataclass(frozen=True)
class Guard:
    """A TEMP trigger ``BEFORE <event> ON <table> WHEN <when>`` that aborts the statement.

    ``when`` may use ``{tolerance}`` (the tolerance configured for ``rule_id``, else
    ``default_tolerance``, else the global one) and the SQL functions in ``functions`` (name ->
    Python callable, registered on the guarded connection) and in ``configured(settings)`` (the same,
    built from the connection's settings: the configured symbol grammar).
    """

    table: str                       # "trading.portfolio_snapshots"
    events: tuple[str, ...]          # ("INSERT", "UPDATE OF total_equity, cash_balance")
    when: str
    reason: str
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict, hash=False, compare=False)
    #: The rule that reports a breach of this invariant (names the trigger, the message, the tolerance).
    rule_id: str = ""
    default_tolerance: float | None = None
    configured: Callable[[Any], Mapping[str, Callable[..., Any]]] | None = field(default=None, hash=False, compare=False)

    def functions_for(self, settings: object) -> Mapping[str, Callable[..., Any]]:
        """The SQL functions to register on a connection opened with ``settings``."""
        return {**self.functions, **(self.configured(settings) if self.configured is not None else {})}

    @property
    def database(self) -> str:
        return self.table.split(".", 1)[0]


#: An opening leg never carries realized P&L (``opening_leg_with_pnl`` reports a breach).
OPENING_LEG_GUARD = Guard("trading.trades", ("INSERT", "UPDATE OF realized_pnl, is_close"),
                          "NEW.is_close = 0 AND NEW.realized_pnl IS NOT NULL",
                          "an opening leg (is_close = 0: a BUY opening a long lot or a SELL opening a short one) "
                          "never carries realized P&L", rule_id="opening_leg_with_pnl")
#: Every trade names the session that produced it (``trade_row_invalid``).
RUN_ID_GUARD = Guard("trading.trades", ("INSERT",), "NEW.run_id IS NULL OR trim(NEW.run_id) = ''",
                     "a trade needs the run_id of the session that produced it", rule_id="trade_row_invalid")
#: Every trade's ticker is a symbol of the configured grammar (``trade_row_invalid``): the SQL function
#: is built per connection from its settings' ``symbol_pattern``.
TICKER_GUARD = Guard("trading.trades", ("INSERT",), "NOT toolkit_plausible_ticker(NEW.ticker)",
                     "the ticker is not a plausible symbol", {"toolkit_plausible_ticker": is_plausible_ticker},
                     rule_id="trade_row_invalid",
                     configured=lambda settings: {"toolkit_plausible_ticker": grammar(settings).sql_function()})
#: The ledger's own row guards: what every guarded connection installs unless told otherwise.
LEDGER_GUARDS: tuple[Guard, ...] = (OPENING_LEG_GUARD, RUN_ID_GUARD, TICKER_GUARD)


def is_finite_number(value: object) -> bool:
    """An int (not a bool) or a finite float. (An int of any size: ``math.isfinite`` would overflow on it.)"""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


# -- the bounds ----------------------------------------------------------------------------------
# Every amount the ledger holds — a price, a quantity, a commission, a trade's notional (quantity ×
# price), a starting capital, an adjustment, a cash balance — lies within ±MAX_AMOUNT, and every time
# within 0..MAX_EPOCH. Why 1e12: a double carries 53 bits (about 15.9 significant digits), so below
# 1e12 adjacent floats are at most 2**-13 (0.000122) apart — a cent is held to about 1/80 of a cent,
# well inside the money tolerance (0.01) with room for the rounding of many additions to a running
# cash balance (at 1e15 floats are 0.125 apart: cents are lost). And with every factor at most
# 1e12, a product is at most 1e24 and a sum of any number of them stays far below the float range
# (1.8e308): the accounting's arithmetic can never overflow on values inside the bounds. A trillion
# dollars, or shares, is beyond any paper-trading session; a value beyond it is a unit mistake
# (milliseconds for seconds, cents scaled twice) or an attack.

#: The largest absolute amount of money or quantity the ledger accepts (see the comment above).
MAX_AMOUNT = 1e12
#: The last second the ledger accepts: 9999-12-31 23:59:59 UTC, the last one SQLite's date functions
#: show (the ``v_trades`` view), far inside SQLite's 64-bit integers. Times start at 0 (1970).
MAX_EPOCH = 253_402_300_799
_LARGEST_FLOAT = 1.7976931348623157e308   # sys.float_info.max: only an infinity is larger
#: The bounds, said once for messages (the next step after a refused value).
BOUNDS = (f"pass finite amounts within ±{MAX_AMOUNT:g} and times as epoch seconds in 0..{MAX_EPOCH} "
          "(toolkit.domain.MAX_AMOUNT, MAX_EPOCH)")


def is_amount(value: object) -> bool:
    """A finite number (not a bool) within ±:data:`MAX_AMOUNT`: what any amount of the ledger may be."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and -MAX_AMOUNT <= value <= MAX_AMOUNT)   # NaN compares False; ±inf are beyond the bound


def amount_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not an amount the ledger may hold (``None`` when it is), naming it as ``name``."""
    if is_amount(value):
        return None
    if not is_finite_number(value):
        return f"{name} {value!r} is not a finite amount"
    return f"{name} {value!r} is beyond the ledger's bound of ±{MAX_AMOUNT:g}"


def amount_problem_sql(expression: str, name: str) -> str:
    """:func:`amount_problem` in SQL, for a number: the ``WHEN … THEN message`` arm of a ``CASE`` that
    names ``expression`` (as ``name``) when it is beyond ±:data:`MAX_AMOUNT`. SQLite stores no NaN;
    an infinity (or a product that overflowed to one) is "not a finite amount"."""
    return (f"WHEN abs({expression}) > {MAX_AMOUNT!r} THEN '{name} ' || quote({expression}) || "
            f"CASE WHEN abs({expression}) > {_LARGEST_FLOAT!r} THEN ' is not a finite amount' "
            f"ELSE ' is beyond the ledger''s bound of ±{MAX_AMOUNT:g}' END")


def epoch_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not a time the ledger may hold: an epoch integer in 0..:data:`MAX_EPOCH`."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_EPOCH:
        return None
    return (f"{name} must be a Unix epoch integer in 0..{MAX_EPOCH} (seconds, up to the year 9999), "
            f"got {value!r}")


def trade_problems(
    ticker: object,
    action: object,
    quantity: object,
    price: object,
    commission: object,
    executed_at: object,
    run_id: object,
    *,
    symbols: SymbolGrammar | None = None,
) -> list[str]:
    """Why a trade's executed facts are not acceptable (empty when they are).

    The ticker is a symbol of ``symbols`` (the configured grammar, :func:`symbol_checker`; the
    default one when not given). Quantity, price, commission and the notional (quantity × price) are amounts within ±:data:`MAX_AMOUNT`;
    ``executed_at`` an epoch integer in 0..:data:`MAX_EPOCH`.
    """
    problems = []
    why = (symbols or grammar()).problem(ticker)
    if why is not None:
        problems.append(f"ticker {ticker!r} is not a plausible symbol: {why}")
    if action not in ("BUY", "SELL"):
        problems.append(f"action must be BUY or SELL, got {action!r}")
    quantity_ok = price_ok = False
    if not is_finite_number(quantity) or quantity <= 0:
        problems.append(f"quantity must be a finite number > 0, got {quantity!r}")
    elif quantity > MAX_AMOUNT:
        problems.append(f"quantity {quantity!r} is beyond the ledger's bound of {MAX_AMOUNT:g}")
    elif same_quantity(quantity, 0.0):
        # Quantities are kept to 1e-9 (SPEC §3): such a lot could never be matched, and a SELL of it
        # would be recorded without any lot match.
        problems.append(f"quantity {quantity!r} is 0 at the ledger's 1e-9 quantity precision")
    else:
        quantity_ok = True
    if not is_finite_number(price) or price <= 0:
        problems.append(f"price must be a finite number > 0, got {price!r}")
    elif price > MAX_AMOUNT:
        problems.append(f"price {price!r} is beyond the ledger's bound of {MAX_AMOUNT:g}")
    else:
        price_ok = True
    if quantity_ok and price_ok and quantity * price > MAX_AMOUNT:  # type: ignore[operator]
        problems.append(f"notional {quantity!r} × {price!r} = {quantity * price!r} "  # type: ignore[operator]
                        f"is beyond the ledger's bound of {MAX_AMOUNT:g}")
    if not is_finite_number(commission) or commission < 0:
        problems.append(f"commission must be a finite number >= 0, got {commission!r}")
    elif commission > MAX_AMOUNT:
        problems.append(f"commission {commission!r} is beyond the ledger's bound of {MAX_AMOUNT:g}")
    problem = epoch_problem("executed_at", executed_at)
    if problem is not None:
        problems.append(problem)
    if not isinstance(run_id, str) or not run_id.strip():
        problems.append(f"run_id must name the session that produced the trade, got {run_id!r}")
    return problems


def average_reward(total_rewards: float, total_episodes: int) -> float:
    """The ``avg_reward`` an RL model state must carry in its hyperparameters (seed 000, finding 6)."""
    return round(total_rewards / max(total_episodes, 1), 4)


def state_key_problem(text: object) -> str | None:
    """Why a Q-table key is not a plain state-tuple literal such as ``"(1, 0, 'UP')"`` (None if it is).

    The key is parsed with ``ast`` and inspected; nothing is ever evaluated. A plain literal is a
    tuple whose elements are numbers (optionally signed), strings, booleans or None.
    """
    import ast

    if not isinstance(text, str):
        return f"not a string ({type(text).__name__})"
    if len(text) > MAX_STATE_KEY_LENGTH:
        return f"longer than {MAX_STATE_KEY_LENGTH} characters"
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return f"not a Python literal ({type(exc).__name__})"
    if not isinstance(node, ast.Tuple):
        return f"not a tuple literal ({type(node).__name__})"
    for element in node.elts:
        value = element
        if isinstance(value, ast.UnaryOp) and isinstance(value.op, (ast.USub, ast.UAdd)):
            value = value.operand
            if not (isinstance(value, ast.Constant) and type(value.value) in (int, float)):
                return "a signed element that is not a number"
        if not (isinstance(value, ast.Constant) and type(value.value) in (int, float, str, bool, type(None))):
            return f"element {ast.unparse(element)[:40]!r} is not a plain literal"
    return None


def parse_state_key(text: str) -> tuple:
    """Turn a Q-table key back into its state tuple, safely (never ``eval``); ``ValueError`` if unsafe."""
    import ast

    problem = state_key_problem(text)
    if problem is not None:
        raise ValueError(f"unsafe Q-table key {text[:60]!r}: {problem}")
    return ast.literal_eval(text.strip())
