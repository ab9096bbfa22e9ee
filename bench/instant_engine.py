"""INSTANT ENGINE (benchmarks only; not an engine users pick).

An :class:`~pipeline.engines.base.Engine` that answers every request at once, with no model, inside the
pipeline's own engine replicas (Ray actors), so ``bench/scale.py --engine instant`` measures what the
pipeline itself costs on the engine-actor path (rendering, routing, parsing, commits, the driver's work)
with the LLM taken out. It is loaded through the plugin engine kind:

    engine: {kind: plugin, plugin: "instant_engine:InstantEngine"}

with ``bench/`` on the replicas' Python path (``bench/scale.py`` puts it on ``PYTHONPATH`` in the CLI's
environment; a local Ray started by the CLI hands that environment to its workers).

Its texts are the load generator's (:mod:`loadserver`): each request goes through
:meth:`loadserver.LoadServer.chat` as the chat-completions body the openai engine would send
(``n``, ``seed``, ``max_tokens``, ``stop: ["\\n"]``, structured choices), so the negatives kind parses its
answers exactly as often as it parses the load generator's, including the deliberately invalid fraction
(``CONTRASTGEN_INSTANT_INVALID_RATE``, default 0.1, as ``bench/scale.py --invalid-rate``). Finish reasons
map as the openai engine maps them (:func:`pipeline.engines.finish.finish_reason`).

``name`` says what it is ("instant (bench only)"); ``model_id`` is ``EngineConfig.model_id()``, as the
embedded engine's, so unit keys are the normal ones.

When ``CONTRASTGEN_INSTANT_STATS`` names a folder, each replica keeps a small JSON file there
(``<pid>.json``: when it was built, its first and last call, calls, requests), rewritten after each call, so
the benchmark can cut its stage windows as it does from the load generator's clock.

>>> from pipeline.engines.config import EngineConfig
>>> from pipeline.records import GenerationRequest, Sampling
>>> eng = InstantEngine(EngineConfig(kind="plugin", plugin="instant_engine:InstantEngine"))
>>> eng.generate([GenerationRequest("k", (("user", "Hi"),), Sampling(0.0, 1.0, 8, 2, 0))])[0].texts
('Yes.', 'Yes.')
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loadserver, when imported as bench.instant_engine

import loadserver

from pipeline.engines.config import EngineConfig
from pipeline.engines.finish import check_finish_reasons, finish_reason, sampling_args
from pipeline.records import Completion, GenerationRequest

LABEL = "instant engine (bench only)"
INVALID_RATE_ENV = "CONTRASTGEN_INSTANT_INVALID_RATE"
STATS_ENV = "CONTRASTGEN_INSTANT_STATS"


def chat_body(req: GenerationRequest) -> dict:
    """The chat-completions body the openai engine sends for ``req`` (with structured outputs on)."""
    body = {"messages": [{"role": r, "content": c} for r, c in req.messages], **sampling_args(req.sampling)}
    if req.sampling.choices:
        body["structured_outputs"] = {"choice": list(req.sampling.choices)}
    elif req.sampling.json_schema:
        body["structured_outputs"] = {"json": json.loads(req.sampling.json_schema)}
    return body


class InstantEngine:
    """The load generator's answers, in process, at once (benchmarks only)."""

    name = "instant (bench only)"

    def __init__(self, cfg: EngineConfig):
        self.model_id = cfg.model_id()
        rate = float(os.environ.get(INVALID_RATE_ENV, "0.1"))
        self.server = loadserver.LoadServer(invalid_rate=rate, model=self.model_id)
        folder = os.environ.get(STATS_ENV)
        self.stats_path = Path(folder) / f"{os.getpid()}.json" if folder else None
        self.stats = {
            "label": LABEL,
            "pid": os.getpid(),
            "built": time.time(),
            "first_call": None,
            "last_call": None,
            "calls": 0,
            "requests": 0,
        }
        self._lock = threading.Lock()  # a replica may run several calls at once (engine.calls_in_flight)
        self._save()

    def warmup(self) -> None:
        """Nothing to load."""

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        start = time.time()
        out = []
        for req in requests:
            t = time.perf_counter()
            resp = self.server.chat(chat_body(req))
            choices = [SimpleNamespace(**ch) for ch in resp["choices"]]
            c = Completion(
                req.key,
                tuple(ch.message["content"] for ch in choices),
                resp["usage"]["prompt_tokens"],
                resp["usage"]["completion_tokens"],
                round(time.perf_counter() - t, 6),
                tuple(finish_reason(ch) for ch in choices),
            )
            check_finish_reasons(c, req.sampling.n)
            out.append(c)
        with self._lock:
            st = self.stats
            st["first_call"] = min(st["first_call"] or start, start)
            st["last_call"] = max(st["last_call"] or 0.0, time.time())
            st["calls"] += 1
            st["requests"] += len(requests)
            self._save()
        return out

    def _save(self) -> None:
        if self.stats_path is None:
            return
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stats))
        os.replace(tmp, self.stats_path)


def read_stats(folder: Path) -> dict:
    """The replicas' files merged: the earliest build and first call, the latest last call, summed counts."""
    files = [json.loads(p.read_text()) for p in Path(folder).glob("*.json")]
    first = [f["first_call"] for f in files if f.get("first_call")]
    last = [f["last_call"] for f in files if f.get("last_call")]
    return {
        "replicas": len(files),
        "built": min((f["built"] for f in files), default=None),
        "first_call": min(first, default=None),
        "last_call": max(last, default=None),
        "calls": sum(f["calls"] for f in files),
        "requests": sum(f["requests"] for f in files),
    }
