"""The engine processes behind ``contrastgen serve`` and the batcher that feeds them.

On CPU the server keeps the pipeline's layout (:mod:`pipeline.engines.pool`): one single-threaded engine
process per core, each loading the embedded engine once. One process whose torch runs a thread per core made
47 tok/s on a quiet 2-core machine and 3 tok/s while another torch process shared the cores (issue 31);
single-threaded processes do not spin-wait on each other's cores (docs/engines.md). They are plain
``multiprocessing`` (spawn) children, not Ray actors: a server on one machine needs no cluster.

The :class:`Batcher` has one feeder per process. A free process takes what is queued, its fair share when
more is queued than it should take alone (``ceil(queued / processes)``, at least an engine batch), and
otherwise keeps collecting until a 20 ms gap: a burst is split over the free processes, and requests that
arrive while all are busy form the next batches. Each request carries its own seed and the engine's texts do
not depend on the batch (docs/engines.md), so a request's texts are the same whichever process runs it.

One request cannot fail the others: a batch whose engine call fails (an error, the process dying, a call past
``engine.call_timeout_s``) is run again in halves, down to the request that fails alone, which alone gets the
error (``Failed``). A dead or hung process is replaced first.

Fault injection, for tests only: with ``$CONTRASTGEN_SERVE_INJECT_FAULTS=1`` in the server's environment, a
request whose messages hold ``ENGINE-ERROR-REQUEST`` makes the engine call raise, and one holding
``ENGINE-EXIT-REQUEST`` ends the engine process (as the OOM killer would). Off unless that variable is set.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess

from pipeline.errors import EngineError
from pipeline.records import Completion, GenerationRequest

FAULTS_ENV = "CONTRASTGEN_SERVE_INJECT_FAULTS"
ERROR_MARKER, EXIT_MARKER = "ENGINE-ERROR-REQUEST", "ENGINE-EXIT-REQUEST"
log = logging.getLogger("contrastgen.serve")


@dataclass(frozen=True)
class Failed:
    """A request the engine could not complete when run alone: why."""

    key: str
    error: str


class _CallFailed(Exception):
    """An engine call failed (its engine raised, its process died or hung); which request caused it is unknown."""


def _inject_faults(requests: list[GenerationRequest]) -> None:
    text = " ".join(c for r in requests for _, c in r.messages)
    if EXIT_MARKER in text:
        os._exit(1)
    if ERROR_MARKER in text:
        raise RuntimeError(f"injected engine error ({ERROR_MARKER} in a message, ${FAULTS_ENV}=1)")


def _engine_main(conn, engine_json: str, threads: int) -> None:
    """An engine process: load the engine, then answer each list of requests with ("ok", completions) or
    ("error", why) until the server closes the pipe."""
    import torch

    torch.set_num_threads(threads)  # before the engine's first op; one per process on CPU (the pipeline's layout)
    from pipeline.engines.config import EngineConfig
    from pipeline.engines.embedded import EmbeddedEngine

    engine = EmbeddedEngine(EngineConfig.model_validate_json(engine_json))
    engine.warmup()
    conn.send(("ready", os.getpid()))
    faults = os.environ.get(FAULTS_ENV) == "1"
    answer: tuple[str, list[Completion] | str]
    while True:
        try:
            requests = conn.recv()
        except EOFError:  # the server is gone
            return
        try:
            if faults:
                _inject_faults(requests)
            answer = ("ok", engine.generate(requests))
        except Exception as exc:  # noqa: BLE001 - the server finds the request that caused it and tells its client
            answer = ("error", f"{type(exc).__name__}: {exc}"[:1000])
        try:
            conn.send(answer)
        except OSError:  # the server is gone
            return


class EngineProcess:
    """One engine process and its pipe, one call at a time (calls block: the batcher runs them on a thread)."""

    def __init__(self, index: int, engine_json: str, threads: int, start_timeout_s: float, call_timeout_s: float):
        self.index, self.engine_json, self.threads = index, engine_json, threads
        self.start_timeout_s, self.call_timeout_s = start_timeout_s, call_timeout_s
        self.proc: SpawnProcess | None = None
        self.conn: Connection | None = None
        self.pid: int | None = None
        self.closed = False

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools or event loop
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_engine_main,
            args=(child, self.engine_json, self.threads),
            daemon=True,
            name=f"contrastgen-serve-engine-{self.index}",
        )
        self.proc.start()
        child.close()

    def _started(self) -> tuple[Connection, SpawnProcess]:
        """The pipe and the process; only called after :meth:`start`, which sets both (nothing resets them)."""
        assert self.conn is not None and self.proc is not None, "engine process used before start()"
        return self.conn, self.proc

    def wait_ready(self) -> None:
        conn, proc = self._started()
        if not conn.poll(self.start_timeout_s):
            self.stop()
            raise EngineError(
                f"engine process {self.index}: expected it to load the model within engine.start_timeout_s "
                f"= {self.start_timeout_s:g} s, it did not. Fix: check free memory and the server log, "
                "or raise engine.start_timeout_s"
            )
        try:
            _, self.pid = conn.recv()
        except EOFError:
            proc.join(5)
            raise EngineError(
                f"engine process {self.index} exited while loading the model (exit code "
                f"{proc.exitcode}). Fix: see its error above in the server log"
            ) from None

    def call(self, requests: list[GenerationRequest]) -> list[Completion]:
        """The engine's completions of ``requests``; :class:`_CallFailed` when the call fails, after replacing a
        process that died or ran past ``call_timeout_s``."""
        conn, _ = self._started()
        try:
            conn.send(requests)
            if not conn.poll(self.call_timeout_s):
                self.restart()
                raise _CallFailed(
                    f"the engine call of {len(requests)} requests passed engine.call_timeout_s = "
                    f"{self.call_timeout_s:g} s; its process was replaced"
                )
            status, value = conn.recv()
        except (EOFError, OSError):
            _, proc = self._started()  # again: a failed restart() above may have replaced the process
            proc.join(5)
            code = proc.exitcode
            if not self.closed:  # not the server shutting down
                self.restart()
            raise _CallFailed(f"the engine process ended during the call (exit code {code}); it was replaced") from None
        if status != "ok":
            raise _CallFailed(value)
        return value

    def restart(self) -> None:
        log.warning("contrastgen serve: replacing engine process %d (pid %s)", self.index, self.pid)
        self.stop()
        self.start()
        self.wait_ready()

    def stop(self) -> None:
        """End the process (it holds nothing to save). Killed before its pipe is closed here, so a thread waiting
        on the pipe wakes (end of file) instead of waiting on a closed handle."""
        if self.proc is None:
            return
        conn, proc = self._started()
        proc.kill()
        proc.join(5)
        conn.close()


def start_engines(
    engine_json: str, workers: int, threads: int, start_timeout_s: float, call_timeout_s: float
) -> list[EngineProcess]:
    """``workers`` engine processes, loading side by side; returns once every one answered (or raises)."""
    engines = [EngineProcess(i, engine_json, threads, start_timeout_s, call_timeout_s) for i in range(workers)]
    try:
        for e in engines:
            e.start()
        for e in engines:
            e.wait_ready()
    except BaseException:
        for e in engines:
            e.stop()
        raise
    return engines


class Batcher:
    """Feeds queued requests to the engine processes (see the module docstring); each request's future gets
    its :class:`Completion` or its :class:`Failed`."""

    def __init__(self, engines: list[EngineProcess], max_batch: int, min_share: int, wait_s: float = 0.02):
        self.engines, self.max_batch, self.min_share, self.wait_s = engines, max_batch, min_share, wait_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.threads = ThreadPoolExecutor(len(engines), thread_name_prefix="serve-engine")

    async def submit(self, req: GenerationRequest) -> Completion | Failed:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((req, fut))
        return await fut

    async def run(self) -> None:
        await asyncio.gather(*(self._feed(e) for e in self.engines))

    async def _feed(self, engine: EngineProcess) -> None:
        while True:
            batch = [(r, f) for r, f in await self._take() if not f.cancelled()]  # a client that gave up
            outs: Sequence[Completion | Failed | Exception]
            try:
                outs = await self._run(engine, [r for r, _ in batch]) if batch else []
            except Exception as exc:  # a bug here: its requests get a 500 with it, the others go on
                log.exception("contrastgen serve: engine process %d could not run a batch", engine.index)
                outs = [exc] * len(batch)
            for (_, fut), out in zip(batch, outs, strict=True):
                if not fut.done():
                    fut.set_exception(out) if isinstance(out, Exception) else fut.set_result(out)

    async def _take(self) -> list:
        """The next batch for a free process: at once what is queued up to its share, else a burst."""
        batch = [await self.queue.get()]
        queued = self.queue.qsize()
        limit = self.max_batch
        if queued:  # a backlog: leave the other processes their share
            limit = min(limit, max(self.min_share, -(-(queued + 1) // len(self.engines))))
        while len(batch) < limit:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            if queued:
                break
            try:  # requests of one client burst arrive a few ms apart: collect until a gap of wait_s
                batch.append(await asyncio.wait_for(self.queue.get(), self.wait_s))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self, engine: EngineProcess, requests: list[GenerationRequest]) -> Sequence[Completion | Failed]:
        """One outcome per request; a failed call is run again in halves, so only the request that fails alone
        fails (a batch-invariant engine gives the others the same texts)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.threads, engine.call, requests)
        except EngineError as exc:  # its process could not be replaced: halves would only try again
            return [Failed(r.key, str(exc)) for r in requests]
        except _CallFailed as exc:
            if len(requests) == 1:
                log.warning("contrastgen serve: request %s failed alone: %s", requests[0].key, exc)
                return [Failed(requests[0].key, str(exc))]
            log.warning(
                "contrastgen serve: a batch of %d requests failed (%s); running it again in halves to find "
                "the request that causes it",
                len(requests),
                exc,
            )
            mid = len(requests) // 2
            return [*await self._run(engine, requests[:mid]), *await self._run(engine, requests[mid:])]

    def close(self) -> None:
        for e in self.engines:
            e.closed = True
            e.stop()
        self.threads.shutdown(wait=False, cancel_futures=True)
