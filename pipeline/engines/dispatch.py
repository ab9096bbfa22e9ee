"""The dispatcher: one Ray actor on the driver's node that hands parts to engine replicas by pull, and the fault
rules of a part's call.

Part workers anywhere in the cluster call :class:`Dispatcher.generate` (through :class:`DispatcherCall`); the
dispatcher runs each call in a thread of its own, takes a slot on a replica (:class:`Slots`: the part's
preferred replica when it has room, else the least busy one with room, else it waits for the first to free up),
calls it under ``engine.call_timeout_s`` and gives the slot back. A replica is ``ready``, ``starting`` (being
placed or restarted: a background probe waits up to ``engine.start_timeout_s`` for it), or ``dead``; only ready
replicas take parts, so a replica that is restarting, lost with its node or never placed costs no part any time.

Faults, each ending with every unit exactly once (a part's results are committed only when it returns whole):

- the replica's process died under the call (``RayActorError``) on a live node: the requests may be poison.
  The part runs again one request at a time on that replica alone, once Ray has restarted it: a request that
  crashes it alone ``engine.crash_attempts`` times becomes an ``engine_crash`` failure, the others complete. When
  the first three lone requests all crash it, the engine is broken, not fed poison: the run stops (resumable);
- the replica died with its node, or its engine died inside a live actor (``ReplicaDeadError``: vLLM's
  EngineDeadError): nothing the requests did. The actor is killed for Ray to restart, and the part runs again
  whole on a ready replica, at once;
- a call past its deadline: the replica is killed (Ray restarts it) and the part is retried once on another
  replica, then its requests fail as ``engine_timeout``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from pipeline.engines.config import EngineConfig
from pipeline.errors import ContrastgenError, EngineError, ReplicaDeadError, TransientEngineError
from pipeline.records import Completion, EngineFailure, GenerationRequest, Reason

if TYPE_CHECKING:
    from ray.actor import ActorClass, ActorHandle

NAMESPACE = "contrastgen"
_log = logging.getLogger("contrastgen.dispatch")


class Slots:
    """Which replica takes the next call: ``cap`` calls at once each; state per replica. Thread-safe."""

    def __init__(self, n: int, cap: int):
        self.cap, self.busy, self.state, self.calls = cap, [0] * n, ["starting"] * n, [0] * n
        self.draining = [0] * n  # exclusive waiters: no new shared calls start there
        self.cond = threading.Condition()

    def set(self, k: int, state: str) -> None:
        with self.cond:
            self.state[k] = state
            self.cond.notify_all()

    def _free(self, k: int, exclusive: bool) -> bool:
        if self.state[k] != "ready":
            return False
        return self.busy[k] == 0 if exclusive else (self.busy[k] < self.cap and not self.draining[k])

    def _pick(self, prefer: int, exclusive: bool, only: bool, avoid: int | None) -> int | None:
        if only and self.state[prefer] != "dead":
            return prefer if self._free(prefer, exclusive) else None
        live = [k for k in range(len(self.busy)) if self.state[k] != "dead"]
        free = [k for k in live if self._free(k, exclusive) and (k != avoid or live == [avoid])]
        if prefer in free:
            return prefer
        return min(free, key=lambda k: (self.busy[k], k)) if free else None

    def acquire(self, prefer: int, exclusive: bool = False, only: bool = False, avoid: int | None = None) -> int:
        """A slot (all of a replica's, ``exclusive``) on ``prefer`` when it has room, else on the least busy ready
        replica (``only``: ``prefer`` alone while it is not dead; ``avoid``: not that one while another lives).
        Waits while replicas start; raises when every replica is dead."""
        with self.cond:
            if exclusive:
                self.draining[prefer] += 1
            try:
                while (k := self._pick(prefer, exclusive, only, avoid)) is None:
                    if all(s == "dead" for s in self.state):
                        raise TransientEngineError(
                            f"all {len(self.state)} engine replicas are dead or not coming back. Fix: check `ray "
                            f"status` "
                            "and the replicas' logs (`ray logs`); rerun the same command to resume"
                        )
                    self.cond.wait(timeout=5)
                self.busy[k] += self.cap if exclusive else 1
                self.calls[k] += 1
                return k
            finally:
                if exclusive:
                    self.draining[prefer] -= 1

    def release(self, k: int, exclusive: bool = False) -> None:
        with self.cond:
            self.busy[k] -= self.cap if exclusive else 1
            self.cond.notify_all()


class _Crash(Exception):
    """The replica's process died under a call on a live node: the requests may be poison."""

    def __init__(self, k: int, message: str):
        super().__init__(message)
        self.replica = k


class _Lost(Exception):
    """The replica died with its node, or its engine died: the part runs again whole elsewhere."""


class _Restarting(Exception):
    """A probe found the replica not back yet."""


class _Timeout(_Crash):
    """A call ran past ``engine.call_timeout_s``; its replica was killed (Ray restarts it)."""


@ray.remote
class Dispatcher:
    """Hands parts to replicas (see the module doc); one call per thread."""

    def __init__(self, engine_json: str, names: Sequence[str]):
        self.cfg = EngineConfig.model_validate_json(engine_json)
        self.actors = [ray.get_actor(n, namespace=NAMESPACE) for n in names]
        self.slots = Slots(len(names), self.cfg.replica_calls())
        self.nodes: list[str | None] = [None] * len(names)
        self.ident: tuple[str, str] | None = None
        self.notes: deque[str] = deque(maxlen=200)  # fault notes for the driver's log (drain_notes)
        for k in range(len(names)):
            self._probe_later(k)

    def _probe_later(self, k: int, old_pid: int | None = None) -> None:
        threading.Thread(target=self._probe, args=(k, old_pid), daemon=True, name=f"probe-{k}").start()

    def _probe(self, k: int, old_pid: int | None) -> None:
        """Wait up to ``engine.start_timeout_s`` for replica ``k`` to answer (placed, model loaded; a process other
        than ``old_pid``, the one just killed), then mark it."""
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while True:
            try:
                node = cast(str, ray.get(self.actors[k].node.remote(), timeout=max(1.0, deadline - time.monotonic())))
                self.nodes[k] = node
                if old_pid is not None and ray.get(self.actors[k].pid.remote(), timeout=30) == old_pid:
                    raise _Restarting  # the killed process still answers: not back yet
                self.ident = self.ident or tuple(ray.get(self.actors[k].identity.remote()))
                return self.slots.set(k, "ready")
            except (ActorUnavailableError, _Restarting):  # restarting: calls fail at once until it is back
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            except (ActorDiedError, GetTimeoutError):
                break
        self.warn(
            "engine replica %d did not come up within engine.start_timeout_s = %g s; going on without it",
            k,
            self.cfg.start_timeout_s,
        )
        self.slots.set(k, "dead")

    def wait_ready(self) -> tuple[str, str]:
        """(engine name, model id) once a replica is ready; an error when none comes up within start_timeout_s."""
        with self.slots.cond:
            while "ready" not in self.slots.state and "starting" in self.slots.state:
                self.slots.cond.wait(timeout=5)
        if self.ident is None:
            raise EngineError(
                f"expected an engine replica to load within engine.start_timeout_s = "
                f"{self.cfg.start_timeout_s:g} s, none did. Fix: check `ray status` (free CPUs/GPUs for "
                "the replicas) and their logs, or raise engine.start_timeout_s"
            )
        return self.ident

    def states(self) -> list[tuple[str, int]]:
        """Each replica's state and the calls it has taken."""
        return list(zip(self.slots.state, self.slots.calls))

    def warn(self, msg: str, *args) -> None:
        """A fault note: in this actor's log, and kept for the driver (:meth:`drain_notes`), whose user sees it."""
        _log.warning(msg, *args)
        self.notes.append(msg % args)

    def drain_notes(self) -> list[str]:
        out = list(self.notes)
        self.notes.clear()
        return out

    def generate(self, index: int, requests: list[GenerationRequest]) -> list[Completion | EngineFailure]:
        """One outcome per request, in order. A part whose replica is lost runs again whole on another."""
        for _ in range(1 + 2 * len(self.actors)):
            try:
                return self._part(index, requests)
            except _Lost as lost:
                self.warn("part %d: %s; running it again on a ready replica", index, lost)
        raise TransientEngineError(
            f"part {index}: engine replicas kept dying. Fix: check `ray status` and the replicas' "
            "logs; rerun the same command to resume"
        )

    def _part(self, index: int, requests: list[GenerationRequest]) -> list[Completion | EngineFailure]:
        try:
            return self._call(index % len(self.actors), requests)
        except _Timeout as t:
            self.warn("part %d: %s; retrying it once on another replica", index, t)
            first = t.replica
        except _Crash as crash:
            return self._isolate(crash.replica, requests, index)
        try:
            return self._call(first, requests, avoid=first)
        except _Timeout as t:
            return [
                EngineFailure(r.key, Reason.engine_timeout, f"{t} (twice: on replicas {first} and {t.replica})")
                for r in requests
            ]
        except _Crash as crash:
            return self._isolate(crash.replica, requests, index)

    def _isolate(self, k: int, requests: list[GenerationRequest], index: int) -> list[Completion | EngineFailure]:
        """Run a crashed part's requests one at a time on replica ``k`` alone; a lone request that crashes it is a
        failure. When the first lone requests all crash, the engine is broken rather than fed poison: stop."""
        self.warn(
            "part %d crashed engine replica %d; running its %d requests one at a time to find the cause",
            index,
            k,
            len(requests),
        )
        out: list[Completion | EngineFailure] = []
        crashes, completed = 0, 0
        for r in requests:
            for attempt in range(1, self.cfg.crash_attempts + 1):
                try:
                    out.append(self._call(k, [r], exclusive=True)[0])
                    completed += 1
                    break
                except _Timeout as t:
                    out.append(
                        EngineFailure(
                            r.key, Reason.engine_timeout, f"{t} (run alone after its part crashed the engine)"
                        )
                    )
                    break
                except _Crash as crash:
                    crashes += 1
                    if not completed and crashes >= 3:
                        raise EngineError(
                            f"expected a crash caused by one request, found the engine crashing on each of "
                            f"{crashes} requests run alone ({crash}). Fix: check the engine replicas' logs "
                            "(`ray logs`); the run resumes from its finished parts"
                        ) from None
                    if attempt == self.cfg.crash_attempts:
                        out.append(
                            EngineFailure(
                                r.key,
                                Reason.engine_crash,
                                f"crashed the engine when run alone ({attempt}x, after its part crashed it): {crash}",
                            )
                        )
        return out

    def _call(
        self, prefer: int, requests: list[GenerationRequest], exclusive: bool = False, avoid: int | None = None
    ) -> list[Completion | EngineFailure]:
        """``requests`` on a replica with room under the call deadline (see :meth:`Slots.acquire`)."""
        k = self.slots.acquire(prefer, exclusive=exclusive, only=exclusive, avoid=avoid)
        try:
            return ray.get(self.actors[k].generate.remote(requests), timeout=self.cfg.call_timeout_s)
        except GetTimeoutError:
            self._restart(k, kill=True)  # a hung engine: Ray restarts it for later calls
            raise _Timeout(
                k,
                f"engine call of {len(requests)} requests passed engine.call_timeout_s = "
                f"{self.cfg.call_timeout_s:g} s on replica {k}",
            ) from None
        except RayActorError as exc:
            self._restart(k)
            node = self.nodes[k]
            if node is not None and not _alive(node):
                raise _Lost(f"replica {k} died with its node {node}") from exc
            raise _Crash(k, f"replica {k} died: {type(exc).__name__}") from exc
        except RayTaskError as exc:
            if isinstance(exc, ReplicaDeadError):  # the engine died: replace the replica (not the requests' fault)
                self._restart(k, kill=True)
                raise _Lost(f"replica {k}'s engine died ({str(exc).splitlines()[-1][:300]}); replacing it") from exc
            if isinstance(exc, ContrastgenError):  # our own engine errors say what to do; transient ones retry
                raise
            raise _Crash(k, f"replica {k} raised {exc.cause!r}"[:500]) from exc
        finally:
            self.slots.release(k, exclusive)

    def _restart(self, k: int, kill: bool = False) -> None:
        """Replica ``k`` failed: no parts until its probe sees it back (``kill``: have Ray restart it now)."""
        with self.slots.cond:
            if self.slots.state[k] != "ready":
                return  # another call saw it fail already; its probe runs
            self.slots.state[k] = "starting"
        old_pid: int | None = None
        if kill:
            try:
                old_pid = cast(int, ray.get(self.actors[k].pid.remote(), timeout=5))
            except Exception:  # noqa: BLE001 (already gone: any answer will be a new process)
                pass
            ray.kill(self.actors[k], no_restart=False)
        self._probe_later(k, old_pid)


def _alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


def start_dispatcher(engine: EngineConfig, names: list[str], name: str):
    """The named dispatcher of these replicas (the running one, or a new one on this node, holding no CPU)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = (
        cast("ActorClass[Dispatcher]", Dispatcher)
        .options(  # ray.remote on a class: mypy keeps the class
            name=name,
            namespace=NAMESPACE,
            get_if_exists=True,
            max_concurrency=256,
            num_cpus=0,
            scheduling_strategy=here,
        )
        .remote(engine.model_dump_json(), names)
    )
    return handle, name


class DispatcherCall:
    """A part worker's engine (:class:`pipeline.engines.pool.PartEngine`): the named dispatcher (picklable)."""

    def __init__(self, name: str, engine_name: str, model_id: str):
        self.name, self.engine_name, self.model_id = name, engine_name, model_id
        self._handle: ActorHandle | None = None

    def __getstate__(self) -> dict:
        return {"name": self.name, "engine_name": self.engine_name, "model_id": self.model_id}

    def __setstate__(self, state: dict) -> None:
        self.name, self.engine_name, self.model_id = state["name"], state["engine_name"], state["model_id"]
        self._handle = None

    def generate(self, index: int, requests: list[GenerationRequest]) -> list[Completion | EngineFailure]:
        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=NAMESPACE)
        return ray.get(self._handle.generate.remote(index, requests))
