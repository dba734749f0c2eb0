"""Create the positions tables: open positions, closed positions, and their summary views.

``positions`` is the projection of the trade ledger's open lots: one row per ticker and side, with the
open quantity and the quantity-weighted entry price of the remaining lots. ``closed_positions`` keeps
one row per fully closed lot (its entry trade, weighted exit price and realized P&L).
"""

DATABASE = "positions"

UPGRADE = """
CREATE TABLE positions (
    position_id        INTEGER PRIMARY KEY,
    ticker             TEXT    NOT NULL CHECK (length(ticker) BETWEEN 1 AND 32),
    side               TEXT    NOT NULL DEFAULT 'long' CHECK (side IN ('long', 'short')),
    quantity           REAL    NOT NULL CHECK (quantity > 0),
    entry_price        REAL    NOT NULL CHECK (entry_price > 0),
    current_price      REAL    CHECK (current_price IS NULL OR current_price > 0),
    unrealized_pnl     REAL,
    stop_loss_price    REAL    CHECK (stop_loss_price IS NULL OR stop_loss_price > 0),
    take_profit_price  REAL    CHECK (take_profit_price IS NULL OR take_profit_price > 0),
    opened_at          INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL CHECK (updated_at >= opened_at),
    strategy           TEXT,
    signal_score       REAL,
    metadata           TEXT    CHECK (metadata IS NULL OR json_valid(metadata))
);

CREATE INDEX idx_positions_ticker ON positions (ticker);
CREATE INDEX idx_positions_strategy ON positions (strategy);
CREATE INDEX idx_positions_opened_at ON positions (opened_at DESC);
CREATE INDEX idx_positions_unrealized_pnl ON positions (unrealized_pnl DESC);
CREATE UNIQUE INDEX idx_positions_ticker_side ON positions (ticker, side);

CREATE TABLE closed_positions (
    position_id             INTEGER PRIMARY KEY,
    entry_trade_id          INTEGER UNIQUE,
    ticker                  TEXT    NOT NULL CHECK (length(ticker) BETWEEN 1 AND 32),
    side                    TEXT    NOT NULL DEFAULT 'long' CHECK (side IN ('long', 'short')),
    quantity                REAL    NOT NULL CHECK (quantity > 0),
    entry_price             REAL    NOT NULL CHECK (entry_price > 0),
    current_price           REAL,
    unrealized_pnl          REAL,
    stop_loss_price         REAL,
    take_profit_price       REAL,
    opened_at               INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL,
    strategy                TEXT,
    signal_score            REAL,
    metadata                TEXT    CHECK (metadata IS NULL OR json_valid(metadata)),
    closed_at               INTEGER NOT NULL CHECK (closed_at >= opened_at),
    exit_price              REAL    NOT NULL CHECK (exit_price > 0),
    realized_pnl            REAL    NOT NULL,
    holding_period_hours    REAL    CHECK (holding_period_hours IS NULL OR holding_period_hours >= 0),
    exit_reason             TEXT,
    commission              REAL    NOT NULL DEFAULT 0 CHECK (commission >= 0),
    slippage                REAL,
    max_favorable_excursion REAL,
    max_adverse_excursion   REAL
);

CREATE INDEX idx_closed_positions_ticker ON closed_positions (ticker);
CREATE INDEX idx_closed_positions_strategy ON closed_positions (strategy);
CREATE INDEX idx_closed_positions_closed_at ON closed_positions (closed_at DESC);
CREATE INDEX idx_closed_positions_realized_pnl ON closed_positions (realized_pnl DESC);

CREATE VIEW v_position_summary AS
SELECT
    position_id,
    ticker,
    side,
    quantity,
    entry_price,
    current_price,
    quantity * entry_price                                   AS cost_basis,
    quantity * COALESCE(current_price, entry_price)          AS market_value,
    unrealized_pnl,
    CASE WHEN current_price IS NOT NULL
         THEN (current_price - entry_price) / entry_price * 100.0 END AS unrealized_pnl_pct,
    stop_loss_price,
    take_profit_price,
    strategy,
    signal_score,
    datetime(opened_at, 'unixepoch')                         AS opened_at,
    datetime(updated_at, 'unixepoch')                        AS updated_at,
    (updated_at - opened_at) / 3600.0                        AS holding_hours
FROM positions
ORDER BY unrealized_pnl DESC;

CREATE VIEW v_recent_closed_trades AS
SELECT
    position_id,
    entry_trade_id,
    ticker,
    side,
    quantity,
    entry_price,
    exit_price,
    realized_pnl,
    CASE WHEN entry_price > 0
         THEN (exit_price - entry_price) / entry_price * 100.0 END AS realized_pnl_pct,
    holding_period_hours,
    exit_reason,
    commission,
    strategy,
    datetime(opened_at, 'unixepoch')                          AS opened_at,
    datetime(closed_at, 'unixepoch')                          AS closed_at
FROM closed_positions
ORDER BY closed_at DESC, position_id DESC
LIMIT 100;
"""

DOWNGRADE = """
DROP VIEW v_recent_closed_trades;
DROP VIEW v_position_summary;
DROP TABLE closed_positions;
DROP TABLE positions;
"""


def upgrade(db):
    db.script(UPGRADE)


def downgrade(db):
    db.script(DOWNGRADE)
