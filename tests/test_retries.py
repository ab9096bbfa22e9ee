"""Task-level retries of generation stages: transient engine errors only, bounded, on the flow's stage task (a retry
sends
only the units still missing: parts commit atomically)."""

from __future__ import annotations

import pytest
from prefect import flow, task

import flows.generate
from flows.retry import ENGINE_RETRIES, transient_only
from pipeline.errors import EngineError, TransientEngineError


def test_transient_errors_are_retried_and_others_fail_at_once(prefect_session):
    calls: list[str] = []

    @task(**{**ENGINE_RETRIES, "retry_delay_seconds": 0})
    def part(kind: str) -> str:
        calls.append(kind)
        if kind == "always" or calls.count(kind) == 1:
            raise (EngineError if kind == "bad" else TransientEngineError)(f"{kind} failed")
        return "ok"

    @flow
    def run(kind: str) -> str:
        return part(kind)

    assert run("flaky") == "ok" and calls.count("flaky") == 2
    with pytest.raises(EngineError):
        run("bad")
    assert calls.count("bad") == 1  # not worth retrying
    with pytest.raises(TransientEngineError):
        run("always")
    assert calls.count("always") == 3  # the first try and two retries: no retry storm


def test_every_flow_retries_its_parts_the_same_way():
    for mod in (flows.generate,):  # one flow for every kind
        t = mod.generate_stage
        assert (t.retries, t.retry_condition_fn, t.retry_jitter_factor) == (2, transient_only, 0.5)
        assert list(t.retry_delay_seconds) == [10, 20]
