"""Create the trading tables: orders, fills, portfolio snapshots, performance metrics, and views.

``v_order_fills`` is the one definition of an order's fill aggregates (quantity, volume-weighted
price, commission); the order/fill integrity rule, its repair and the guard read it, and
``v_order_fill_stats`` adds the first and last fill times for reading.

Enumerations of more than two values are written as OR chains, not IN lists: SQLite builds a
temporary table for an IN list of more than two constants on every insert (about 4 µs per row for
seven values), while an OR chain of equalities costs next to nothing.
"""

DATABASE = "trading"

UPGRADE = """
CREATE TABLE orders (
    order_id          TEXT    PRIMARY KEY CHECK (length(order_id) BETWEEN 1 AND 64),
    ticker            TEXT    NOT NULL CHECK (length(ticker) BETWEEN 1 AND 32),
    order_type        TEXT    NOT NULL CHECK (order_type = 'market' OR order_type = 'limit' OR order_type = 'stop' OR order_type = 'stop_limit'),
    side              TEXT    NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity          REAL    NOT NULL CHECK (quantity > 0),
    limit_price       REAL    CHECK (limit_price IS NULL OR limit_price > 0),
    stop_price        REAL    CHECK (stop_price IS NULL OR stop_price > 0),
    time_in_force     TEXT    NOT NULL DEFAULT 'day' CHECK (time_in_force = 'day' OR time_in_force = 'gtc' OR time_in_force = 'ioc' OR time_in_force = 'fok' OR time_in_force = 'opg' OR time_in_force = 'cls'),
    status            TEXT    NOT NULL DEFAULT 'pending'
                      CHECK (status = 'pending' OR status = 'submitted' OR status = 'partially_filled' OR status = 'filled' OR status = 'cancelled' OR status = 'rejected' OR status = 'expired'),
    filled_quantity   REAL    NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0),
    filled_avg_price  REAL    CHECK (filled_avg_price IS NULL OR filled_avg_price > 0),
    commission        REAL    NOT NULL DEFAULT 0 CHECK (commission >= 0),
    slippage          REAL,
    position_id       INTEGER,
    strategy          TEXT,
    submitted_at      INTEGER NOT NULL,
    filled_at         INTEGER,
    cancelled_at      INTEGER,
    updated_at        INTEGER,
    metadata          TEXT    CHECK (metadata IS NULL OR json_valid(metadata)),
    CHECK (limit_price IS NOT NULL OR order_type NOT IN ('limit', 'stop_limit')),
    CHECK (stop_price IS NOT NULL OR order_type NOT IN ('stop', 'stop_limit'))
);

CREATE INDEX idx_orders_ticker ON orders (ticker);
CREATE INDEX idx_orders_status ON orders (status);
CREATE INDEX idx_orders_submitted_at ON orders (submitted_at DESC);
CREATE INDEX idx_orders_position_id ON orders (position_id);
CREATE INDEX idx_orders_strategy ON orders (strategy);

CREATE TABLE fills (
    fill_id      TEXT    PRIMARY KEY CHECK (length(fill_id) BETWEEN 1 AND 64),
    order_id     TEXT    NOT NULL REFERENCES orders (order_id),
    ticker       TEXT    NOT NULL CHECK (length(ticker) BETWEEN 1 AND 32),
    side         TEXT    NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity     REAL    NOT NULL CHECK (quantity > 0),
    price        REAL    NOT NULL CHECK (price > 0),
    filled_at    INTEGER NOT NULL,
    liquidity    TEXT    CHECK (liquidity IS NULL OR liquidity IN ('maker', 'taker')),
    commission   REAL    NOT NULL DEFAULT 0 CHECK (commission >= 0),
    position_id  INTEGER,
    metadata     TEXT    CHECK (metadata IS NULL OR json_valid(metadata))
);

-- Covers every fill column the per-order aggregates read, so they never touch the table.
CREATE INDEX idx_fills_order_id ON fills (order_id, quantity, price, commission, filled_at);
CREATE INDEX idx_fills_ticker ON fills (ticker);
CREATE INDEX idx_fills_filled_at ON fills (filled_at DESC);
CREATE INDEX idx_fills_position_id ON fills (position_id);

CREATE TABLE portfolio_snapshots (
    snapshot_id         INTEGER PRIMARY KEY,
    snapshot_date       TEXT    NOT NULL CHECK (date(snapshot_date) IS snapshot_date),
    snapshot_time       INTEGER NOT NULL,
    total_equity        REAL    NOT NULL,
    cash_balance        REAL    NOT NULL,
    long_market_value   REAL    NOT NULL DEFAULT 0 CHECK (long_market_value >= 0),
    short_market_value  REAL    NOT NULL DEFAULT 0 CHECK (short_market_value >= 0),
    daily_pnl           REAL,
    cumulative_pnl      REAL,
    realized_pnl        REAL,
    unrealized_pnl      REAL,
    positions_count     INTEGER NOT NULL DEFAULT 0 CHECK (positions_count >= 0),
    buying_power        REAL,
    leverage            REAL    CHECK (leverage IS NULL OR leverage >= 0),
    UNIQUE (snapshot_date, snapshot_time)
);

CREATE INDEX idx_portfolio_snapshots_date ON portfolio_snapshots (snapshot_date DESC);
CREATE INDEX idx_portfolio_snapshots_time ON portfolio_snapshots (snapshot_time DESC);

CREATE TABLE performance_metrics (
    metric_id                 INTEGER PRIMARY KEY,
    metric_date               TEXT    NOT NULL CHECK (date(metric_date) IS metric_date),
    period                    TEXT    NOT NULL DEFAULT 'daily' CHECK (period = 'daily' OR period = 'weekly' OR period = 'monthly' OR period = 'all_time'),
    strategy                  TEXT,
    sharpe_ratio              REAL,
    sortino_ratio             REAL,
    calmar_ratio              REAL,
    max_drawdown              REAL,
    max_drawdown_pct          REAL,
    current_drawdown          REAL,
    volatility                REAL    CHECK (volatility IS NULL OR volatility >= 0),
    win_rate                  REAL    CHECK (win_rate IS NULL OR win_rate BETWEEN 0 AND 1),
    profit_factor             REAL    CHECK (profit_factor IS NULL OR profit_factor >= 0),
    avg_win                   REAL,
    avg_loss                  REAL,
    total_trades              INTEGER CHECK (total_trades IS NULL OR total_trades >= 0),
    total_return              REAL,
    alpha                     REAL,
    beta                      REAL,
    correlation_to_benchmark  REAL    CHECK (correlation_to_benchmark IS NULL OR correlation_to_benchmark BETWEEN -1 AND 1),
    created_at                INTEGER NOT NULL
);

CREATE INDEX idx_performance_metrics_date ON performance_metrics (metric_date DESC);
CREATE INDEX idx_performance_metrics_strategy ON performance_metrics (strategy);

CREATE VIEW v_recent_orders AS
SELECT
    order_id, ticker, order_type, side, quantity, limit_price, stop_price, status,
    filled_quantity, filled_avg_price, commission, strategy,
    datetime(submitted_at, 'unixepoch') AS submitted_at,
    datetime(filled_at, 'unixepoch')    AS filled_at
FROM orders
ORDER BY submitted_at DESC, order_id DESC
LIMIT 100;

CREATE VIEW v_order_fills AS
SELECT
    o.order_id,
    o.quantity,
    o.status,
    o.filled_quantity,
    o.filled_avg_price,
    o.commission,
    COUNT(f.order_id)                                      AS fill_count,
    COALESCE(SUM(f.quantity), 0)                           AS fills_quantity,
    CASE WHEN SUM(f.quantity) > 0
         THEN SUM(f.quantity * f.price) / SUM(f.quantity) END AS fills_avg_price,
    COALESCE(SUM(f.commission), 0)                         AS fills_commission
FROM orders AS o
LEFT JOIN fills AS f ON f.order_id = o.order_id
GROUP BY o.order_id;

CREATE VIEW v_order_fill_stats AS
SELECT
    v.order_id,
    o.ticker,
    o.side,
    v.quantity,
    v.status,
    v.filled_quantity,
    v.filled_avg_price,
    v.commission,
    v.fill_count,
    v.fills_quantity,
    v.fills_avg_price,
    v.fills_commission,
    (SELECT datetime(MIN(f.filled_at), 'unixepoch') FROM fills AS f WHERE f.order_id = v.order_id) AS first_fill_at,
    (SELECT datetime(MAX(f.filled_at), 'unixepoch') FROM fills AS f WHERE f.order_id = v.order_id) AS last_fill_at
FROM v_order_fills AS v
JOIN orders AS o ON o.order_id = v.order_id;

CREATE VIEW v_equity_curve AS
SELECT
    snapshot_date,
    datetime(snapshot_time, 'unixepoch') AS snapshot_time,
    total_equity,
    cash_balance,
    long_market_value,
    short_market_value,
    daily_pnl,
    cumulative_pnl,
    MAX(total_equity) OVER running                              AS peak_equity,
    total_equity / NULLIF(MAX(total_equity) OVER running, 0) - 1.0 AS drawdown
FROM portfolio_snapshots
WINDOW running AS (ORDER BY snapshot_time ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
ORDER BY portfolio_snapshots.snapshot_time;

CREATE VIEW v_performance_summary AS
SELECT
    metric_date, period, strategy, sharpe_ratio, sortino_ratio, calmar_ratio,
    max_drawdown, max_drawdown_pct, current_drawdown, volatility, win_rate, profit_factor,
    avg_win, avg_loss, total_trades, total_return
FROM performance_metrics
WHERE metric_date >= date('now', '-30 days')
ORDER BY metric_date DESC;
"""

DOWNGRADE = """
DROP VIEW v_performance_summary;
DROP VIEW v_equity_curve;
DROP VIEW v_order_fill_stats;
DROP VIEW v_order_fills;
DROP VIEW v_recent_orders;
DROP TABLE performance_metrics;
DROP TABLE portfolio_snapshots;
DROP TABLE fills;
DROP TABLE orders;
"""


def upgrade(db):
    db.script(UPGRADE)


def downgrade(db):
    db.script(DOWNGRADE)
