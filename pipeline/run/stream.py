"""A stage's parts streamed through Ray Data part workers that render, generate, commit and count them: the one
generation path of every engine.

The driver plans a block's stage into parts (pending units, task-major) and hands them to Ray Data as a dataset of
one row a part; it never renders a prompt, parses an answer or assembles a row. A part worker:

1. renders the part's units into requests (the kind's templates; the rendered text is what the unit key hashed);
2. generates them: through the engine's dispatcher (:mod:`pipeline.engines.dispatch`) for engines Ray replicas
   hold (embedded, vllm, plugin), which hands the part to whichever replica has room (pull); or with the HTTP
   client its process keeps for ``engine.kind: openai``;
3. commits the results as one atomic raw part under its content-hash name (:func:`pipeline.run.common.commit_part`);
4. for a kind whose parts assemble alone (negatives), parses and validates them (word-class check included) for the
   live counts, and returns only counts, file names and unit keys; the driver indexes the keys
   (:meth:`pipeline.run.store.RunStore.adopt`) and advances the progress line.

Ray Data's streaming executor bounds the parts in flight (backpressure). The part workers are Ray tasks (Ray reuses
their processes across blocks and stages; what a worker loads is kept per process). For Ray replicas they hold no CPU
of their own: the replicas hold the cores, and ``engine`` slots bound the tasks in flight. For the openai engine each
holds a CPU (it renders, parses and validates) and an HTTP client, at most ``ray.clients`` at once: one part-worker
path for every engine (an actor pool cost the driver the same, docs/throughput.md).
A worker that dies (killed, or lost with its node) is retried by Ray Data: a part is a file named
by its keys, committed whole or not at all, so a part run twice is one file, never a loss or a duplicate. An error
a part raises (a server down past its retries, every replica dead) ends the stage as an instance of its own class;
a retry of the stage (:mod:`flows.retry`) plans again and sends only the units still missing.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import stop
from pipeline.config import RunConfig
from pipeline.engines.pool import EnginePool, PartEngine, ensure_ray
from pipeline.kinds.base import Context, Inputs, Kind
from pipeline.progress import Meter
from pipeline.raydata import stream
from pipeline.records import Unit
from pipeline.run.store import RunStore


@dataclass
class PartJob:
    """What every part of a stage needs in a worker (shipped once through Ray's object store)."""

    kind: str
    cfg: RunConfig
    templates: dict[str, Any]
    root: str
    engine: PartEngine | None  # a Ray engine's dispatcher; None: the worker holds its own HTTP client


_CLIENTS: dict[str, EnginePool] = {}  # per worker process: the openai engine's HTTP client, by its config


def _client(job: PartJob) -> EnginePool:
    """This process's HTTP client for the run's openai engine (built, and its server probed, once)."""
    key = job.cfg.engine.model_dump_json()
    if key not in _CLIENTS:
        _CLIENTS[key] = EnginePool(job.cfg.engine, job.cfg.ray)
    return _CLIENTS[key]


class Parts:
    """Renders, generates, commits and counts parts: built per Ray task (:func:`run_parts`: cheap; the models and
    the HTTP client it uses are kept per process)."""

    def __init__(self, job: PartJob):
        from pipeline.kinds import kind_of

        self.job, self.kind = job, kind_of(job.kind)
        self.ctx = Context(job.cfg, job.templates, Inputs([], [], 0), raws=lambda name: [])
        self.store = RunStore(Path(job.root))  # no lock: the driver holds it; a worker only adds atomic files
        self.journal: list[tuple[str, list[str]]] = []  # what this worker's commits wrote, batch by batch
        self.store.journal = self.journal
        self.engine = job.engine or _client(job)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from pipeline.run.common import commit_part

        self.journal.clear()
        counts = []
        for index, payload in zip(batch["index"].tolist(), batch["payload"]):
            units: list[Unit] = pickle.loads(payload)  # our own records, pickled by the driver below
            requests = [self.kind.render(u, self.ctx) for u in units]
            modes = [self.kind.mode(u, self.job.cfg) for u in units]
            seen: dict = {}
            commit_part(
                self.engine,
                index,
                units,
                requests,
                modes,
                self.store,
                lambda raws, failed: seen.update(self._counts(raws, failed)),
            )
            counts.append(json.dumps(seen))
        return {
            "file": [n for n, _ in self.journal],
            "keys": [k for _, k in self.journal],
            "counts": counts + [""] * (len(self.journal) - len(counts)),
        }

    def _counts(self, raws: list, failed: list) -> dict:
        """What a committed part adds to the live progress: units, output tokens, and (for a kind whose parts
        assemble alone) valid and rejected outputs by type."""
        kept: Counter[str] = Counter()
        rejected = Counter(r.task or "?" for r in failed)
        if self.kind.part_assembles and raws:
            a = self.kind.assemble(self.ctx, raws)
            kept.update(self.kind.reject_task(r) for r in a.rows)
            rejected.update(r.task or "?" for r in a.rejects)
        return {
            "units": len(raws) + len(failed),
            "tokens": sum(r.provenance.tokens_out for r in raws),
            "kept": kept,
            "rejected": rejected,
        }


def run_parts(batch: dict[str, np.ndarray], job: PartJob) -> dict[str, list]:
    """Ray Data task: the parts of ``batch`` (what a task builds is cheap; models it loads are cached per process)."""
    return Parts(job)(batch)


def stream_parts(
    kind: Kind,
    ctx: Context,
    store: RunStore,
    chunks: list[list[Unit]],
    pool: EnginePool | None = None,
    meter: Meter | None = None,
) -> None:
    """Generate and commit ``chunks`` (one part each) on Ray Data part workers; the driver indexes what they committed
    as it streams back. ``pool``: the run's engine (its replicas' dispatcher); None for the openai engine. The
    first error a part raises ends the stream, raised here as an instance of its own class."""
    cfg = ctx.cfg
    ensure_ray(cfg.ray)
    rows = [{"index": i, "payload": pickle.dumps(c)} for i, c in enumerate(chunks)]
    replicas = pool if pool is not None and pool.local is None else None  # the engine runs in Ray replicas
    ray_engine = replicas is not None
    job = PartJob(kind.name, cfg, ctx.templates, str(store.root), replicas.caller() if replicas is not None else None)
    # a part may take two call deadlines and its replica's restart: Ray Data's watchdog must not end it first
    patience = 2 * cfg.engine.call_timeout_s + cfg.engine.start_timeout_s
    workers = replicas.slots if replicas is not None else cfg.ray.clients or 2
    results = stream(rows, run_parts, (job,), workers, no_progress_s=patience, tasks=True, cpus=0 if ray_engine else 1)
    try:
        for batch in results:
            _adopt(batch, store, meter)
            if replicas is not None:
                replicas.log_notes()
            stop.check()  # a stop between parts: what is committed is indexed, the stream ends here
    finally:
        if replicas is not None and stop.asked() is None:
            replicas.log_notes()


def _adopt(batch, store: RunStore, meter: Meter | None) -> None:
    """Index a streamed batch's committed files; advance the progress line by its counts."""
    files, keys = batch.column("file").to_pylist(), batch.column("keys").to_pylist()
    store.adopt(zip(files, keys))
    if meter is None:
        return
    for c in batch.column("counts").to_pylist():
        if c:
            seen = json.loads(c)
            meter.advance(
                seen["units"],
                tokens=seen["tokens"],
                parts=1,
                kept=Counter(seen["kept"]),
                rejected=Counter(seen["rejected"]),
            )
