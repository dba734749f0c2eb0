"""Create rl_model_states: saved RL agents (Q-tables keyed by state-tuple literals, hyperparameters).

``q_table`` is a JSON object whose keys are Python tuple literals such as ``"(1, 0, 'UP')"``; they
are only ever parsed with ``ast.literal_eval`` (seed 000 used ``eval``). ``hyperparameters`` carries
``total_episodes``, ``total_rewards`` and ``avg_reward``.
"""

DATABASE = "ml_training"

UPGRADE = """
CREATE TABLE rl_model_states (
    model_id         TEXT    PRIMARY KEY CHECK (length(model_id) BETWEEN 1 AND 64),
    model_type       TEXT    NOT NULL CHECK (length(model_type) BETWEEN 1 AND 32),
    run_id           TEXT    REFERENCES training_runs (run_id),
    q_table          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(q_table)),
    hyperparameters  TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(hyperparameters)),
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL CHECK (updated_at >= created_at)
);

CREATE INDEX idx_rl_model_states_type ON rl_model_states (model_type);
CREATE INDEX idx_rl_model_states_run_id ON rl_model_states (run_id);
"""

DOWNGRADE = """
DROP TABLE rl_model_states;
"""


def upgrade(db):
    db.script(UPGRADE)


def downgrade(db):
    db.script(DOWNGRADE)
