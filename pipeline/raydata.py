"""Ray Data for the two streamed stages: generation part workers (:mod:`pipeline.run.stream`) and model scorers
(:mod:`pipeline.filters.scorers`). Both map a list of rows (a part, a chunk of texts) with an actor pool of one
worker class (or, for parts on engine replicas, a pool of Ray tasks), one row a call, and read the results back as
they finish."""

from __future__ import annotations

from collections.abc import Iterator


def stream(
    rows: list[dict],
    worker,
    args: tuple,
    workers: int,
    gpus: int = 0,
    no_progress_s: float | None = None,
    tasks: bool = False,
    cpus: float = 0,
) -> Iterator:
    """``worker(*args)(batch of one row)`` over ``rows`` on up to ``workers`` Ray Data actors (one CPU and ``gpus``
    GPUs each), yielding each result as a pyarrow table as it comes back. ``tasks``: ``worker(batch, *args)`` is a
    function run as up to ``workers`` Ray tasks at once holding ``cpus`` CPUs each (0 where they wait on engine
    replicas that hold the cores; Ray reuses their processes across streams). ``no_progress_s``: one row may take
    that long, so Ray Data's no-progress watchdog (30 min by default) is raised to at least that. A worker's error is
    raised here as an
    instance of its own class."""
    import ray.data

    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = False  # logs, not a terminal
    data.print_on_execution_start = False
    data.raise_original_map_exception = True  # a worker's contrastgen error reaches the driver as itself, not as text
    if no_progress_s is not None:
        data.execution_no_progress_timeout_s = max(data.execution_no_progress_timeout_s, no_progress_s)
    # up to `workers` actors, never more than rows, starting work once one is up: a fixed size would wait without
    # limit (wait_for_min_actors_s = -1) for actors a busy cluster cannot place
    top = max(1, min(workers, len(rows)))
    ds: ray.data.Dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    if tasks:
        yield from ds.map_batches(
            worker, fn_args=args, batch_size=1, num_cpus=cpus, compute=ray.data.TaskPoolStrategy(size=top)
        ).iter_batches(batch_size=None, batch_format="pyarrow")
        return
    ds = ds.map_batches(
        worker,
        fn_constructor_args=args,
        batch_size=1,
        num_cpus=1,
        num_gpus=gpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=top, initial_size=top),
    )
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
