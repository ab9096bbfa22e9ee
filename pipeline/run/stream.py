"""A stage's parts streamed through Ray Data workers that generate and commit them (``ray.clients > 0``).

For an HTTP-served engine (``engine.kind: openai``: vLLM, SGLang or ``contrastgen serve`` behind an
OpenAI-compatible API, one server per GPU node), the row-parallel work is the client's: rendering the
JSON, waiting, parsing, checking finish reasons and writing the raw part. Run in the driver it is bounded by one
process (``bench/scale.py``: about 3.4 ms of driver CPU a request). Here a block's pending parts become a Ray
Dataset (one row a part) mapped by an actor pool of ``ray.clients`` :class:`PartClient` workers, each with its
own engine client, which commits every part it generates as one atomic raw part under its content-hash name
(:func:`pipeline.run.common.commit_part`) and returns the names and keys it wrote; the driver indexes them
(:meth:`pipeline.run.store.RunStore.adopt`). Ray Data's streaming executor bounds the parts in flight
(backpressure) and spreads the workers over the cluster's nodes.

A worker that dies (killed, or lost with its node) is restarted by Ray Data and its part runs again
(``map_batches`` actors default to unlimited restarts and task retries): a part is a file named by its keys,
committed whole or not at all, so a part run twice is one file, never a loss or a duplicate. An error the
client raises (a server down past its retries) ends the stage; a retry of the stage (:mod:`flows.retry`) plans
again and sends only the units still missing.

Engines Ray actors hold (embedded, vllm) stay on :class:`pipeline.engines.pool.EnginePool`; docs/scale.md says
why (a poison request, the per-call deadline, and a model load per Dataset execution).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from pipeline.engines.config import EngineConfig, RayConfig
from pipeline.kinds.base import Context, Kind
from pipeline.progress import Meter
from pipeline.raydata import stream
from pipeline.records import Unit
from pipeline.run.store import RunStore


class PartClient:
    """A Ray Data worker: one engine client for its life; each batch row is a part it generates and commits."""

    def __init__(self, engine_json: str, root: str):
        from pipeline.engines.pool import EnginePool

        self.pool = EnginePool(EngineConfig.model_validate_json(engine_json), RayConfig())  # a client in this worker
        self.store = RunStore(Path(root))  # no lock: the driver holds it; a worker only adds atomic files
        self.store.journal = []

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from pipeline.run.common import commit_part

        self.store.journal.clear()
        for index, payload in zip(batch["index"].tolist(), batch["payload"]):
            units, requests, modes = pickle.loads(payload)  # our own records, pickled by the driver below
            commit_part(self.pool, index, units, requests, modes, self.store)
        return {"file": [n for n, _ in self.store.journal], "keys": [k for _, k in self.store.journal]}


def stream_parts(kind: Kind, ctx: Context, store: RunStore, chunks: list[list[Unit]], meter: Meter | None = None) -> None:
    """Generate and commit ``chunks`` (one part each) on ``ray.clients`` Ray Data workers; the driver indexes what
    they committed as it streams back. The first error a client raises ends the stream, raised here as an instance of
    its own class (``raise_original_map_exception``), so a transient one is retried by the stage's task."""
    cfg = ctx.cfg
    rows = [{"index": i, "payload": pickle.dumps((c, [kind.render(u, ctx) for u in c], [kind.mode(u, cfg) for u in c]))}
            for i, c in enumerate(chunks)]
    # one CPU a client (a client's parsing and writing is one busy Python thread); Ray Data spreads its actors. A part
    # may take two call deadlines (the client tries it twice): Ray Data's watchdog must not end it first
    for batch in stream(rows, PartClient, (cfg.engine.model_dump_json(), str(store.root)), cfg.ray.clients,
                        no_progress_s=2 * cfg.engine.call_timeout_s + 600):
        files, keys = batch.column("file").to_pylist(), batch.column("keys").to_pylist()
        store.adopt(zip(files, keys))
        if meter is not None:  # units and parts only: the results stay in the workers' files
            meter.advance(sum(len(k) for k in keys), parts=len(files))
