"""Create the trade ledger: trades, lot matches, the account (bankroll) and account adjustments.

Semantics are SPEC §3 (long-only FIFO lots). The executed columns of a trade (ticker, action,
quantity, price, commission, executed_at) are the truth; links, realized P&L, lot status, exit
price/time, lot matches and the cash balance are derived from them by ``toolkit.accounting``.
"""

DATABASE = "trading"

UPGRADE = """
CREATE TABLE trades (
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
    strategy        TEXT,
    CHECK (is_close = (action = 'SELL'))
);

-- The ledger pass reads trades in (ticker, executed_at, trade_id) order; this index covers every
-- column it reads, so the scan never touches the table.
CREATE INDEX idx_trades_ledger ON trades (
    ticker, executed_at, trade_id, action, quantity, price,
    entry_trade_id, realized_pnl, status, exit_price, exit_time, commission
);
CREATE INDEX idx_trades_entry_trade_id ON trades (entry_trade_id);
CREATE INDEX idx_trades_order_id ON trades (order_id);
CREATE INDEX idx_trades_run_id ON trades (run_id);
CREATE INDEX idx_trades_executed_at ON trades (executed_at);
-- Opening legs must never carry realized P&L; this partial index stays empty on a sound ledger.
CREATE INDEX idx_trades_opening_leg_pnl ON trades (trade_id) WHERE action = 'BUY' AND realized_pnl IS NOT NULL;
-- Rows that are invalid on their own (checks/ledger.py INVALID_TRADE repeats this WHERE, so the
-- trade_row_invalid rule reads this index; on a sound ledger it is empty).
CREATE INDEX idx_trades_invalid ON trades (trade_id) WHERE run_id IS NULL OR trim(run_id) = ''
           OR typeof(quantity) NOT IN ('real', 'integer') OR quantity <= 0 OR abs(quantity) > 1e300
           OR typeof(price) NOT IN ('real', 'integer') OR price <= 0 OR abs(price) > 1e300
           OR typeof(commission) NOT IN ('real', 'integer') OR commission < 0 OR abs(commission) > 1e300
           OR typeof(executed_at) <> 'integer'
           OR action NOT IN ('BUY', 'SELL') OR is_close <> (action = 'SELL');

CREATE TABLE lot_matches (
    close_trade_id  INTEGER NOT NULL REFERENCES trades (trade_id),
    entry_trade_id  INTEGER NOT NULL REFERENCES trades (trade_id),
    quantity        REAL    NOT NULL CHECK (quantity > 0),
    entry_price     REAL    NOT NULL CHECK (entry_price > 0),
    exit_price      REAL    NOT NULL CHECK (exit_price > 0),
    realized_pnl    REAL    NOT NULL,
    matched_at      INTEGER NOT NULL,
    PRIMARY KEY (close_trade_id, entry_trade_id)
) WITHOUT ROWID;

CREATE INDEX idx_lot_matches_entry ON lot_matches (entry_trade_id);

CREATE TABLE account (
    account_id        INTEGER PRIMARY KEY CHECK (account_id = 1),
    starting_capital  REAL    NOT NULL CHECK (starting_capital >= 0),
    cash_balance      REAL    NOT NULL,
    currency          TEXT    NOT NULL DEFAULT 'USD' CHECK (length(currency) = 3),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL CHECK (updated_at >= created_at)
);

CREATE TABLE account_adjustments (
    adjustment_id  INTEGER PRIMARY KEY,
    amount         REAL    NOT NULL CHECK (amount <> 0),
    reason         TEXT    NOT NULL CHECK (length(trim(reason)) > 0),
    created_at     INTEGER NOT NULL
);

CREATE INDEX idx_account_adjustments_created_at ON account_adjustments (created_at);

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

DOWNGRADE = """
DROP VIEW v_trades;
DROP TABLE account_adjustments;
DROP TABLE account;
DROP TABLE lot_matches;
DROP TABLE trades;
"""


def upgrade(db):
    db.script(UPGRADE)


def downgrade(db):
    db.script(DOWNGRADE)
