"""The task-level retry policy of generation parts (the generate flow of every kind).

Only :class:`TransientEngineError` is retried (an overloaded or restarting server, every engine actor dead):
a malformed answer or a rejected request fails at once. Two retries, 10 s then 20 s, each +-50% jitter so
parallel parts do not come back in lockstep; the openai client's own per-request retries sit below this.
A retried part is whole again: parts commit atomically, so a retry neither loses nor duplicates units.
"""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from pipeline.errors import TransientEngineError


def transient_only(task, task_run, state) -> bool:
    try:
        state.result()
    except TransientEngineError:
        return True
    except BaseException:  # noqa: BLE001 - anything else is not worth retrying
        return False
    return False


ENGINE_RETRIES = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": transient_only,
}
