"""Create the ML training tables: training runs, agent performance, hyperparameters, ensemble weights,
training episodes, and the leaderboard/ensemble/summary views.

Enumerations of more than two values are written as OR chains, not IN lists: SQLite builds a
temporary table for an IN list of more than two constants on every insert (about 4 µs per row for
seven values), while an OR chain of equalities costs next to nothing.
"""

DATABASE = "ml_training"

UPGRADE = """
CREATE TABLE training_runs (
    run_id            TEXT    PRIMARY KEY CHECK (length(run_id) BETWEEN 1 AND 64),
    model_name        TEXT,
    algorithm         TEXT    NOT NULL CHECK (algorithm = 'PPO' OR algorithm = 'SAC' OR algorithm = 'A2C' OR algorithm = 'TD3' OR algorithm = 'DQN' OR algorithm = 'DDPG' OR algorithm = 'Q_LEARNING'),
    start_time        INTEGER NOT NULL,
    end_time          INTEGER CHECK (end_time IS NULL OR end_time >= start_time),
    duration_seconds  REAL    CHECK (duration_seconds IS NULL OR duration_seconds >= 0),
    total_timesteps   INTEGER CHECK (total_timesteps IS NULL OR total_timesteps >= 0),
    train_start_date  TEXT,
    train_end_date    TEXT,
    val_start_date    TEXT,
    val_end_date      TEXT,
    status            TEXT    NOT NULL DEFAULT 'running' CHECK (status = 'running' OR status = 'completed' OR status = 'failed' OR status = 'stopped'),
    final_reward      REAL,
    model_path        TEXT,
    config_json       TEXT    CHECK (config_json IS NULL OR json_valid(config_json)),
    notes             TEXT
);

CREATE INDEX idx_training_runs_algorithm ON training_runs (algorithm);
CREATE INDEX idx_training_runs_status ON training_runs (status);
CREATE INDEX idx_training_runs_start_time ON training_runs (start_time DESC);
CREATE INDEX idx_training_runs_model_name ON training_runs (model_name);

CREATE TABLE agent_performance (
    performance_id      INTEGER PRIMARY KEY,
    run_id              TEXT    NOT NULL REFERENCES training_runs (run_id),
    evaluation_date     TEXT    NOT NULL,
    evaluation_type     TEXT    NOT NULL DEFAULT 'validation' CHECK (evaluation_type = 'train' OR evaluation_type = 'validation' OR evaluation_type = 'test' OR evaluation_type = 'live'),
    data_period_start   TEXT,
    data_period_end     TEXT,
    sharpe_ratio        REAL,
    sortino_ratio       REAL,
    max_drawdown        REAL,
    total_return        REAL,
    win_rate            REAL    CHECK (win_rate IS NULL OR win_rate BETWEEN 0 AND 1),
    profit_factor       REAL    CHECK (profit_factor IS NULL OR profit_factor >= 0),
    total_trades        INTEGER CHECK (total_trades IS NULL OR total_trades >= 0),
    avg_episode_reward  REAL,
    num_episodes        INTEGER CHECK (num_episodes IS NULL OR num_episodes >= 0),
    created_at          INTEGER NOT NULL
);

CREATE INDEX idx_agent_performance_run_id ON agent_performance (run_id);
CREATE INDEX idx_agent_performance_evaluation_type ON agent_performance (evaluation_type);
CREATE INDEX idx_agent_performance_sharpe ON agent_performance (sharpe_ratio DESC);
CREATE INDEX idx_agent_performance_date ON agent_performance (evaluation_date DESC);

CREATE TABLE hyperparameters (
    hyperparameter_id  INTEGER PRIMARY KEY,
    run_id             TEXT    NOT NULL REFERENCES training_runs (run_id),
    algorithm          TEXT    NOT NULL,
    learning_rate      REAL    CHECK (learning_rate IS NULL OR learning_rate > 0),
    batch_size         INTEGER CHECK (batch_size IS NULL OR batch_size > 0),
    n_steps            INTEGER CHECK (n_steps IS NULL OR n_steps > 0),
    gamma              REAL    CHECK (gamma IS NULL OR gamma BETWEEN 0 AND 1),
    policy_type        TEXT,
    net_arch           TEXT,
    n_epochs           INTEGER CHECK (n_epochs IS NULL OR n_epochs > 0),
    buffer_size        INTEGER CHECK (buffer_size IS NULL OR buffer_size > 0),
    ent_coef           REAL,
    vf_coef            REAL,
    max_grad_norm      REAL,
    params_json        TEXT    CHECK (params_json IS NULL OR json_valid(params_json)),
    created_at         INTEGER NOT NULL
);

CREATE INDEX idx_hyperparameters_run_id ON hyperparameters (run_id);
CREATE INDEX idx_hyperparameters_algorithm ON hyperparameters (algorithm);

CREATE TABLE ensemble_weights (
    weight_id          INTEGER PRIMARY KEY,
    ensemble_id        TEXT    NOT NULL,
    run_id             TEXT    NOT NULL REFERENCES training_runs (run_id),
    algorithm          TEXT    NOT NULL,
    weight             REAL    NOT NULL CHECK (weight >= 0 AND weight <= 1),
    performance_score  REAL,
    sharpe_ratio       REAL,
    is_active          INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    weighting_method   TEXT,
    update_time        INTEGER NOT NULL
);

CREATE INDEX idx_ensemble_weights_ensemble_time ON ensemble_weights (ensemble_id, update_time DESC);
CREATE INDEX idx_ensemble_weights_active ON ensemble_weights (is_active, ensemble_id, weight);
CREATE INDEX idx_ensemble_weights_run_id ON ensemble_weights (run_id);

CREATE TABLE training_episodes (
    episode_id      INTEGER PRIMARY KEY,
    run_id          TEXT    NOT NULL REFERENCES training_runs (run_id),
    episode_number  INTEGER NOT NULL CHECK (episode_number >= 0),
    episode_reward  REAL,
    episode_length  INTEGER CHECK (episode_length IS NULL OR episode_length >= 0),
    mean_action     REAL,
    std_action      REAL    CHECK (std_action IS NULL OR std_action >= 0),
    mean_value      REAL,
    mean_loss       REAL,
    created_at      INTEGER
);

CREATE INDEX idx_training_episodes_run_id ON training_episodes (run_id);
CREATE UNIQUE INDEX idx_training_episodes_run_episode ON training_episodes (run_id, episode_number);

CREATE VIEW v_agent_leaderboard AS
SELECT
    tr.run_id,
    tr.model_name,
    tr.algorithm,
    tr.status,
    ap.evaluation_type,
    ap.sharpe_ratio,
    ap.sortino_ratio,
    ap.max_drawdown,
    ap.total_return,
    ap.win_rate,
    ap.profit_factor,
    ap.total_trades,
    ap.evaluation_date
FROM agent_performance AS ap
JOIN training_runs AS tr ON tr.run_id = ap.run_id
WHERE ap.sharpe_ratio IS NOT NULL
ORDER BY ap.sharpe_ratio DESC;

CREATE VIEW v_current_ensemble AS
SELECT
    ew.ensemble_id,
    ew.run_id,
    ew.algorithm,
    ew.weight,
    ew.performance_score,
    ew.sharpe_ratio,
    ew.weighting_method,
    datetime(ew.update_time, 'unixepoch') AS updated_at,
    tr.status AS run_status
FROM ensemble_weights AS ew
LEFT JOIN training_runs AS tr ON tr.run_id = ew.run_id
WHERE ew.is_active = 1
ORDER BY ew.ensemble_id, ew.weight DESC;

CREATE VIEW v_training_summary AS
SELECT
    tr.run_id,
    tr.model_name,
    tr.algorithm,
    tr.status,
    datetime(tr.start_time, 'unixepoch') AS started_at,
    datetime(tr.end_time, 'unixepoch')   AS ended_at,
    tr.duration_seconds,
    tr.total_timesteps,
    tr.final_reward,
    (SELECT COUNT(*) FROM training_episodes AS te WHERE te.run_id = tr.run_id)                AS episodes,
    (SELECT AVG(te.episode_reward) FROM training_episodes AS te WHERE te.run_id = tr.run_id)  AS avg_episode_reward,
    (SELECT MAX(ap.sharpe_ratio) FROM agent_performance AS ap WHERE ap.run_id = tr.run_id)    AS best_sharpe
FROM training_runs AS tr
ORDER BY tr.start_time DESC;

CREATE VIEW v_hyperparameter_results AS
SELECT
    hp.run_id,
    hp.algorithm,
    hp.learning_rate,
    hp.batch_size,
    hp.n_steps,
    hp.gamma,
    hp.policy_type,
    hp.net_arch,
    ap.sharpe_ratio,
    ap.total_return,
    ap.max_drawdown,
    tr.final_reward
FROM hyperparameters AS hp
JOIN training_runs AS tr ON tr.run_id = hp.run_id
LEFT JOIN agent_performance AS ap ON ap.run_id = hp.run_id
ORDER BY ap.sharpe_ratio DESC;
"""

DOWNGRADE = """
DROP VIEW v_hyperparameter_results;
DROP VIEW v_training_summary;
DROP VIEW v_current_ensemble;
DROP VIEW v_agent_leaderboard;
DROP TABLE training_episodes;
DROP TABLE ensemble_weights;
DROP TABLE hyperparameters;
DROP TABLE agent_performance;
DROP TABLE training_runs;
"""


def upgrade(db):
    db.script(UPGRADE)


def downgrade(db):
    db.script(DOWNGRADE)
