"""Orders against their fills (through the view ``v_order_fills``, the one definition of an
order's fill aggregates)."""
from __future__ import annotations

from collections.abc import Iterator

from toolkit.repair.model import update_row
from toolkit.rules import CheckContext, Rule, Violation, sql_violations
from toolkit.rules.model import Guard, rule

__all__ = ["RULES", "EXPECTED_STATUS", "expected_status"]

def expected_status(fills_quantity: str, quantity: str, status: str) -> str:
    """The status an order must have given its fills (SQL over the given expressions). Orders that
    ended cancelled or expired keep that status; otherwise the fills decide."""
    return f"""CASE
        WHEN round({fills_quantity} - {quantity}, 9) >= 0 THEN 'filled'
        WHEN {fills_quantity} > 0 THEN CASE WHEN {status} IN ('cancelled', 'expired') THEN {status} ELSE 'partially_filled' END
        WHEN {status} IN ('pending', 'submitted', 'rejected', 'cancelled', 'expired') THEN {status}
        ELSE 'submitted' END"""


#: The rule, its repair and the guard all use this one definition.
EXPECTED_STATUS = expected_status("fills_quantity", "quantity", "status")

_GUARDS = (
    Guard("trading.orders", ("INSERT",),
          "NEW.filled_quantity <> 0 OR NEW.filled_avg_price IS NOT NULL OR NEW.status IN ('filled', 'partially_filled')",
          "a new order has no fills yet: insert it unfilled, insert its fills, then update its fill fields"),
    Guard("trading.orders", ("UPDATE OF filled_quantity, filled_avg_price, status, quantity",),
          "EXISTS (SELECT 1 FROM trading.v_order_fills AS v WHERE v.order_id = NEW.order_id AND ("
          "round(NEW.filled_quantity - v.fills_quantity, 9) <> 0 "
          "OR (NEW.filled_avg_price IS NULL) <> (v.fills_avg_price IS NULL) "
          "OR abs(NEW.filled_avg_price - v.fills_avg_price) > {tolerance} "
          f"OR NEW.status <> {expected_status('v.fills_quantity', 'NEW.quantity', 'NEW.status')}))",
          "an order's filled quantity, average price and status must agree with its fills"),
)


def _shown(value: str, infinite_if_null: str = "0") -> str:
    """SQL: ``value`` as a message shows it, marked when it is not a finite amount (an infinity; or NULL
    when ``infinite_if_null`` holds: SQLite turns inf / inf into NULL)."""
    return (f"CASE WHEN abs({value}) > 1.7976931348623157e308 OR ({value} IS NULL AND {infinite_if_null}) "
            f"THEN ifnull({value}, 'NULL') || ' (not a finite amount)' ELSE ifnull({value}, 'NULL') END")


#: Orders whose stored fill fields disagree with ``v_order_fills`` (read like a SQL rule's rows).
_MISMATCHES = f"""
    SELECT order_id, NULL AS fill_id, filled_quantity AS stored, fills_quantity AS computed,
           filled_quantity - fills_quantity AS difference, :tolerance AS tolerance,
           trim(
             CASE WHEN round(filled_quantity - fills_quantity, 9) <> 0
                  THEN 'filled_quantity ' || {_shown("filled_quantity")} || ' != fills ' || {_shown("fills_quantity")} || '; '
                  ELSE '' END ||
             CASE WHEN (filled_avg_price IS NULL) <> (fills_avg_price IS NULL)
                    OR abs(filled_avg_price - fills_avg_price) > :tolerance
                  THEN 'filled_avg_price ' || {_shown("filled_avg_price")} || ' != fills VWAP '
                       || {_shown("fills_avg_price", "fills_quantity > 0")} || '; ' ELSE '' END ||
             CASE WHEN round(fills_quantity - quantity, 9) > 0
                  THEN 'fills exceed the order quantity ' || quantity || '; ' ELSE '' END ||
             CASE WHEN status <> {EXPECTED_STATUS}
                  THEN 'status ' || status || ' but fills say ' || {EXPECTED_STATUS} ELSE '' END, '; ') AS message,
           round(fills_quantity - quantity, 9) <= 0 AS fixable,
           fills_quantity AS fix_filled_quantity, fills_avg_price AS fix_filled_avg_price,
           {EXPECTED_STATUS} AS fix_status,
           filled_quantity AS was_filled_quantity, filled_avg_price AS was_filled_avg_price, status AS was_status
    FROM trading.v_order_fills
    WHERE round(filled_quantity - fills_quantity, 9) <> 0
       OR (filled_avg_price IS NULL) <> (fills_avg_price IS NULL)
       OR abs(filled_avg_price - fills_avg_price) > :tolerance
       OR round(fills_quantity - quantity, 9) > 0
       OR status <> {EXPECTED_STATUS}
"""

_UNKNOWN_ORDER = "SELECT fill_id, 'fill of unknown order ' || quote(order_id) FROM trading.fills"


@rule("order_fill_mismatch", severity="MEDIUM", databases=["trading"],
      reads=["trading.orders", "trading.fills", "trading.v_order_fills"], key=["order_id", "fill_id"],
      repair=update_row("trading", "orders", ["order_id"],
                        why_not="a fill of an unknown order, or fills beyond the order quantity, need a hand fix"),
      guards=_GUARDS)
def order_fill_mismatch(ctx: CheckContext, rule_: Rule) -> Iterator[Violation]:
    """Orders whose filled quantity, average price or status disagree with their fills; fills of unknown orders."""
    yield from sql_violations(ctx, rule_, _MISMATCHES)
    fills_reference_orders = any(
        row[2] == "orders" for row in ctx.conn.execute("SELECT * FROM pragma_foreign_key_list('fills', 'trading')"))
    if fills_reference_orders:
        # The file's foreign key check already looks up every fill's order: share that pass.
        unknown = (ctx.conn.execute(f"{_UNKNOWN_ORDER} WHERE rowid = ?", (rowid,)).fetchone()
                   for table, rowid, parent, _ in ctx.foreign_key_check("trading")
                   if table == "fills" and parent == "orders")
    else:
        unknown = ctx.conn.execute(f"{_UNKNOWN_ORDER} AS f WHERE NOT EXISTS "
                                   "(SELECT 1 FROM trading.orders AS o WHERE o.order_id = f.order_id)")
    for fill_id, message in filter(None, unknown):
        yield Violation(rule_.id, {"fill_id": fill_id}, message)


RULES = (order_fill_mismatch,)
