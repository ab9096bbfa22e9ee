"""Ray Data settings shared by the two streamed stages: generation clients (:mod:`pipeline.run.stream`) and
model scorers (:mod:`pipeline.filters.scorers`)."""

from __future__ import annotations


def data_context(no_progress_s: float | None = None):
    """The driver's Ray Data context, quiet (no progress bars: logs, not a terminal), with the no-progress watchdog
    (30 min by default) raised to at least ``no_progress_s`` where one unit of work may take that long."""
    import ray.data

    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = False
    data.print_on_execution_start = False
    data.raise_original_map_exception = True  # a worker's contrastgen error reaches the driver as itself, not as text
    if no_progress_s is not None:
        data.execution_no_progress_timeout_s = max(data.execution_no_progress_timeout_s, no_progress_s)
    return data


def actor_pool(workers: int, rows: int):
    """An actor pool of up to ``workers`` actors (never more than ``rows``) that starts work as soon as one is up:
    a fixed size would wait without limit (``wait_for_min_actors_s = -1``) for actors a busy cluster cannot place."""
    import ray.data

    top = max(1, min(workers, rows))
    return ray.data.ActorPoolStrategy(min_size=1, max_size=top, initial_size=top)
