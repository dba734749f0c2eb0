"""ml_training.db: rows of unknown runs, ensemble weights, RL model states."""
from __future__ import annotations

import json
from collections.abc import Iterator

from toolkit.domain import average_reward, state_key_problem
from toolkit.repair.model import update_row
from toolkit.rules.model import CheckContext, Guard, Rule, Violation, rule

__all__ = ["RULES", "rl_average_reward_problem"]


@rule("ml_orphan_rows", severity="MEDIUM", databases=["ml_training"],
      reads=["ml_training.training_runs", "ml_training.agent_performance", "ml_training.hyperparameters",
             "ml_training.training_episodes", "ml_training.ensemble_weights"], key=["table", "id"],
      remedy="restore the missing training run, or archive the rows that belong to it")
def ml_orphan_rows():
    """Agent performance, hyperparameter, episode and ensemble-weight rows of unknown training runs."""
    return """
        SELECT 'agent_performance' AS "table", performance_id AS id, 'unknown run ' || quote(run_id) AS message
        FROM ml_training.agent_performance AS x
        WHERE NOT EXISTS (SELECT 1 FROM ml_training.training_runs AS r WHERE r.run_id = x.run_id)
        UNION ALL
        SELECT 'hyperparameters', hyperparameter_id, 'unknown run ' || quote(run_id)
        FROM ml_training.hyperparameters AS x
        WHERE NOT EXISTS (SELECT 1 FROM ml_training.training_runs AS r WHERE r.run_id = x.run_id)
        UNION ALL
        SELECT 'training_episodes', episode_id, 'unknown run ' || quote(run_id)
        FROM ml_training.training_episodes AS x
        WHERE NOT EXISTS (SELECT 1 FROM ml_training.training_runs AS r WHERE r.run_id = x.run_id)
        UNION ALL
        SELECT 'ensemble_weights', weight_id, 'unknown run ' || quote(run_id)
        FROM ml_training.ensemble_weights AS x
        WHERE NOT EXISTS (SELECT 1 FROM ml_training.training_runs AS r WHERE r.run_id = x.run_id)
    """


@rule("ensemble_weights_sum", severity="MEDIUM", databases=["ml_training"], reads=["ml_training.ensemble_weights"],
      key=["ensemble_id"], tolerance=1e-4,
      guards=[Guard("ml_training.ensemble_weights", ("UPDATE OF weight, is_active, ensemble_id",),
                    "OLD.is_active = 1 AND NEW.is_active = 1",
                    "an active ensemble's weights are immutable: deactivate them and insert a new set")], remedy="re-weight the ensemble (the toolkit cannot know which weight is wrong)")
def ensemble_weights_sum():
    """Ensembles whose active weights do not sum to 1."""
    return """
        SELECT ensemble_id, total(weight) AS stored, 1.0 AS computed, total(weight) - 1.0 AS difference,
               :tolerance AS tolerance,
               count(*) || ' active weight(s) sum to ' || total(weight) AS message
        FROM ml_training.ensemble_weights
        WHERE is_active = 1
        GROUP BY ensemble_id
        HAVING NOT abs(total(weight) - 1.0) <= :tolerance
        ORDER BY ensemble_id
    """


def rl_average_reward_problem(hyperparameters: object, tolerance: float) -> tuple[str, float | None] | None:
    """Why a model state's ``avg_reward`` is missing or wrong, and the correct value (None if right)."""
    try:
        data = json.loads(hyperparameters) if isinstance(hyperparameters, str) else None
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return "hyperparameters is not a JSON object", None
    episodes, rewards = data.get("total_episodes"), data.get("total_rewards")
    valid_episodes = isinstance(episodes, int) and not isinstance(episodes, bool) and episodes >= 0
    valid_rewards = isinstance(rewards, (int, float)) and not isinstance(rewards, bool) and rewards == rewards
    if not (valid_episodes and valid_rewards):
        return f"cannot compute avg_reward: total_episodes {episodes!r}, total_rewards {rewards!r}", None
    expected = average_reward(rewards, episodes)
    stored = data.get("avg_reward")
    if "avg_reward" not in data:
        return "avg_reward is missing", expected
    if not isinstance(stored, (int, float)) or isinstance(stored, bool) or not abs(stored - expected) <= tolerance:
        return f"avg_reward {stored!r} != total_rewards / max(total_episodes, 1) = {expected!r}", expected
    return None


@rule("rl_state_missing_avg_reward", severity="LOW", databases=["ml_training"], reads=["ml_training.rl_model_states"],
      key=["model_id"], tolerance=1e-4,
      repair=update_row("ml_training", "rl_model_states", ["model_id"],
                        why_not="total_episodes/total_rewards are missing, so avg_reward cannot be computed"),
      guards=[Guard("ml_training.rl_model_states", ("INSERT", "UPDATE OF hyperparameters"),
                    "toolkit_avg_reward_problem(NEW.hyperparameters) IS NOT NULL",
                    "hyperparameters must carry avg_reward = total_rewards / max(total_episodes, 1)",
                    {"toolkit_avg_reward_problem": lambda h: (rl_average_reward_problem(h, 1e-4) or (None,))[0]})])
def rl_state_missing_avg_reward(ctx: CheckContext, rule_: Rule) -> Iterator[Violation]:
    """RL model states whose hyperparameters lack a correct avg_reward (seed 000, finding 6)."""
    tolerance = ctx.tolerance(rule_)
    for model_id, hyperparameters in ctx.conn.execute(
            "SELECT model_id, hyperparameters FROM ml_training.rl_model_states ORDER BY model_id"):
        problem = rl_average_reward_problem(hyperparameters, tolerance)
        if problem is not None:
            message, expected = problem
            fix = was = None
            if expected is not None:
                data = json.loads(hyperparameters)
                data["avg_reward"] = expected
                fix, was = {"hyperparameters": json.dumps(data)}, {"hyperparameters": hyperparameters}
            yield Violation(rule_.id, {"model_id": model_id}, message, computed=expected, tolerance=tolerance,
                            fix=fix, was=was)


def qtable_problem(q_table: object) -> str | None:
    """Why a Q-table (its JSON text) is not safe to load (None if every key is a plain state literal)."""
    try:
        table = json.loads(q_table) if isinstance(q_table, str) else None
    except (ValueError, RecursionError):
        table = None
    if not isinstance(table, dict):
        return "q_table is not a JSON object"
    for key in table:
        problem = state_key_problem(key)
        if problem is not None:
            return f"key {key[:40]!r}: {problem}"
    return None


@rule("qtable_unsafe_keys", severity="CRITICAL", databases=["ml_training"], reads=["ml_training.rl_model_states"],
      key=["model_id", "state"],
      guards=[Guard("ml_training.rl_model_states", ("INSERT", "UPDATE OF q_table"), "toolkit_qtable_problem(NEW.q_table) IS NOT NULL",
                    "Q-table keys must be plain state-tuple literals", {"toolkit_qtable_problem": qtable_problem})],
      remedy="never eval the key; remove the entry or retrain the model state")
def qtable_unsafe_keys(ctx: CheckContext, rule_: Rule) -> Iterator[Violation]:
    """Q-table keys that are not plain state-tuple literals (parsed safely, never evaluated)."""
    cursor = ctx.conn.execute("SELECT model_id, q_table FROM ml_training.rl_model_states ORDER BY model_id")
    for model_id, q_table in cursor:
        try:
            table = json.loads(q_table) if isinstance(q_table, str) else None
        except (ValueError, RecursionError):
            table = None
        if not isinstance(table, dict):
            yield Violation(rule_.id, {"model_id": model_id, "state": None}, "q_table is not a JSON object")
            continue
        for key in table:
            problem = state_key_problem(key)
            if problem is not None:
                yield Violation(rule_.id, {"model_id": model_id, "state": key}, f"unsafe Q-table key: {problem}")


RULES = (ml_orphan_rows, ensemble_weights_sum, rl_state_missing_avg_reward, qtable_unsafe_keys)
