"""The dispatcher's slot rules (pull routing, exclusive isolation, dead replicas) and the replicas' GPU rules,
without Ray: pure functions and one thread-safe class."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.engines.config import EngineConfig, RayConfig, VLLMEngineConfig
from pipeline.engines.dispatch import Slots
from pipeline.engines.pool import release_before_finalize, visible_devices
from pipeline.errors import TransientEngineError


def _ready(n: int, cap: int = 1) -> Slots:
    s = Slots(n, cap)
    for k in range(n):
        s.set(k, "ready")
    return s


def test_a_part_takes_its_preferred_replica_when_it_has_room_else_the_least_busy():
    s = _ready(3, cap=2)
    assert s.acquire(1) == 1 and s.acquire(1) == 1  # both of replica 1's slots
    assert s.acquire(1) == 0  # full: the least busy ready one (ties: the lowest index)
    assert s.acquire(1) == 2
    assert s.calls == [1, 2, 1]


def test_a_starting_or_dead_replica_takes_no_part_and_a_waiting_part_goes_to_the_first_free():
    s = _ready(2)
    s.set(0, "starting")  # restarting after a fault: its probe has not seen it back
    assert s.acquire(0) == 1
    got = []
    t = threading.Thread(target=lambda: got.append(s.acquire(0)))
    t.start()
    time.sleep(0.2)
    assert not got  # replica 1 is busy, replica 0 not back: the part waits
    s.release(1)
    t.join(5)
    assert got == [1]  # pulled by the replica that freed up, not queued behind the preferred one


def test_every_replica_dead_is_an_error_naming_the_fix():
    s = _ready(2)
    s.set(0, "dead")
    s.set(1, "dead")
    with pytest.raises(TransientEngineError, match="all 2 engine replicas are dead.*rerun the same command"):
        s.acquire(0)


def test_an_exclusive_call_waits_for_the_replica_to_drain_and_blocks_new_calls_there():
    s = _ready(2, cap=2)
    assert s.acquire(0) == 0
    got = []
    t = threading.Thread(target=lambda: got.append(s.acquire(0, exclusive=True, only=True)))
    t.start()
    time.sleep(0.2)
    assert s.acquire(0) == 1  # replica 0 drains for the isolation: new calls go elsewhere
    assert not got
    s.release(0)
    t.join(5)
    assert got == [0] and s.busy[0] == 2  # all of its slots


def test_a_timed_out_part_is_retried_on_another_replica_unless_it_is_the_only_one_alive():
    s = _ready(2)
    assert s.acquire(0, avoid=0) == 1
    s.release(1)
    s.set(1, "dead")
    assert s.acquire(0, avoid=0) == 0


def test_one_gpu_replicas_set_their_own_device_where_ray_does_not():
    noset = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
    assert visible_devices([2], noset) == "2"
    assert visible_devices([0, 1], noset) == "0,1"
    assert visible_devices(["GPU-3b1f", "MIG-7c2e"], noset) == "GPU-3b1f,MIG-7c2e"  # UUIDs and MIG ids as they come
    assert visible_devices([2], {}) is None  # Ray set it already
    assert visible_devices([], noset) is None  # a CPU replica


def test_gpu_replicas_go_before_finalize_only_when_gpu_scorers_need_them():
    gpu_vllm = EngineConfig(kind="vllm", vllm=VLLMEngineConfig(device="cuda"))
    assert release_before_finalize(gpu_vllm, RayConfig(scorers=2))
    assert not release_before_finalize(gpu_vllm, RayConfig(scorers=0))  # the driver scores: the GPUs may stay
    assert not release_before_finalize(EngineConfig(), RayConfig(scorers=2))  # CPU replicas hold no GPU
    assert release_before_finalize(EngineConfig(device="cuda"), RayConfig(scorers=1))
