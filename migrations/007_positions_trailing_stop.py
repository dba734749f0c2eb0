"""A trailing stop on an open position: ``positions.trail_percent``, managed by the bot.

Seed 002's bot trails its stop a percentage behind the best price; ``TradeStore.update_position``
and the guarded connection write it with the other position-management columns (stops, targets,
marks, metadata). NULL means no trailing stop.
"""

DATABASE = "positions"

UPGRADE = """
ALTER TABLE positions ADD COLUMN trail_percent REAL
    CHECK (trail_percent IS NULL OR (trail_percent > 0 AND trail_percent < 100));
"""

DOWNGRADE = """
ALTER TABLE positions DROP COLUMN trail_percent;
"""


def upgrade(db):
    db.script(UPGRADE)


def downgrade(db):
    db.script(DOWNGRADE)
