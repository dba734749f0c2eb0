"""Trades of either side: ``is_close`` says whether a trade closes lots, not whether it is a SELL.

With short lots (SPEC §3 as issue 12 revised it) a BUY may cover short lots (a close) and a SELL may
open a short lot (an opening leg), so the table constraint ``CHECK (is_close = (action = 'SELL'))``
of migration 004 no longer holds. SQLite cannot drop a table constraint in place: the table is
rebuilt (SQLite's documented procedure; the runner switches foreign keys off and checks them
before COMMIT because of ``REBUILDS_TABLES``). The rows are copied unchanged, the indexes are
recreated, and the two partial indexes that encoded "an opening leg is a BUY" now say "an
opening leg is a row with ``is_close = 0``"; the ledger scan's covering index also holds ``is_close``. Whether ``is_close`` is right for a row is a question
for the FIFO (rule ``close_flag_mismatch``), not for the row alone.

Downgrading restores the long-only constraint; it is refused (nothing changes) while the ledger
holds a covering BUY or a short sale.
"""

DATABASE = "trading"
REBUILDS_TABLES = True

_TABLE = """
CREATE TABLE trades_new_rebuild (
    trade_id        INTEGER PRIMARY KEY,
    run_id          TEXT,
    ticker          TEXT    NOT NULL CHECK (length(ticker) BETWEEN 1 AND 32),
    action          TEXT    NOT NULL CHECK (action IN ('BUY', 'SELL')),
    quantity        REAL    NOT NULL CHECK (quantity > 0),
    price           REAL    NOT NULL CHECK (price > 0),
    commission      REAL    NOT NULL DEFAULT 0 CHECK (commission >= 0),
    executed_at     INTEGER NOT NULL,
    is_close        INTEGER NOT NULL CHECK (is_close IN (0, 1)),
    entry_trade_id  INTEGER REFERENCES trades (trade_id),
    realized_pnl    REAL,
    status          TEXT    NOT NULL DEFAULT 'OPEN' CHECK (status IN ('OPEN', 'CLOSED')),
    exit_price      REAL    CHECK (exit_price IS NULL OR exit_price > 0),
    exit_time       INTEGER,
    order_id        TEXT    REFERENCES orders (order_id),
    strategy        TEXT{constraint}
);
"""

_REBUILD = """
DROP VIEW v_trades;
INSERT INTO trades_new_rebuild SELECT trade_id, run_id, ticker, action, quantity, price, commission, executed_at,
    is_close, entry_trade_id, realized_pnl, status, exit_price, exit_time, order_id, strategy FROM trades;
DROP TABLE trades;
ALTER TABLE trades_new_rebuild RENAME TO trades;

CREATE INDEX idx_trades_ledger ON trades (
    ticker, executed_at, trade_id, action, quantity, price,
    entry_trade_id, realized_pnl, status, exit_price, exit_time, commission{ledger_tail}
);
CREATE INDEX idx_trades_entry_trade_id ON trades (entry_trade_id);
CREATE INDEX idx_trades_order_id ON trades (order_id);
CREATE INDEX idx_trades_run_id ON trades (run_id);
CREATE INDEX idx_trades_executed_at ON trades (executed_at);
CREATE INDEX idx_trades_opening_leg_pnl ON trades (trade_id) WHERE {opening} AND realized_pnl IS NOT NULL;
CREATE INDEX idx_trades_invalid ON trades (trade_id) WHERE run_id IS NULL OR trim(run_id) = ''
           OR typeof(quantity) NOT IN ('real', 'integer') OR quantity <= 0 OR abs(quantity) > 1e300
           OR typeof(price) NOT IN ('real', 'integer') OR price <= 0 OR abs(price) > 1e300
           OR typeof(commission) NOT IN ('real', 'integer') OR commission < 0 OR abs(commission) > 1e300
           OR typeof(executed_at) <> 'integer'
           OR action NOT IN ('BUY', 'SELL'){invalid_tail};

CREATE VIEW v_trades AS
SELECT
    trade_id, run_id, ticker, action, quantity, price, commission,
    datetime(executed_at, 'unixepoch') AS executed_at,
    is_close, entry_trade_id, realized_pnl, status, exit_price,
    datetime(exit_time, 'unixepoch')   AS exit_time,
    order_id, strategy
FROM trades
ORDER BY trades.executed_at, trades.trade_id;
"""

UPGRADE = _TABLE.format(constraint="") + _REBUILD.format(opening="is_close = 0", invalid_tail="", ledger_tail=", is_close")
DOWNGRADE = (_TABLE.format(constraint=",\n    CHECK (is_close = (action = 'SELL'))")
             + _REBUILD.format(opening="action = 'BUY'", invalid_tail=" OR is_close <> (action = 'SELL')",
                             ledger_tail=""))


def upgrade(db):
    db.script(UPGRADE)


def downgrade(db):
    both_sides = db.execute("SELECT count(*) FROM trades WHERE is_close <> (action = 'SELL')").fetchone()[0]
    if both_sides:
        raise ValueError(f"the ledger holds {both_sides} covering BUY(s) or short sale(s), which the long-only schema "
                         "of 005 cannot store; keep 006 (or remove those trades by hand first)")
    db.script(DOWNGRADE)
