"""The cost report (issue 35): units' tokens and engine-seconds summed by stage, task and type; shared tasks split
over kept rows; money from engine.price; parts of an earlier version counted as unmetered, and said so."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.config import load_config
from pipeline.engines.config import Price
from pipeline.engines.metered import ReplicaClock, share
from pipeline.errors import ConfigError
from pipeline.records import Completion, Provenance, RawResult, Reason, Rejection, RejectStage
from pipeline.run.cost import Cost, cost_report, spent_in
from pipeline.run.store import RunStore


def _raw(key: str, task: str, tin: int, tout: int, engine_s: float | None) -> RawResult:
    p = Provenance("embedded", "m", "sha", "edit", 0.7, 0.95, 40, 1, tin, tout, 0.1)
    return RawResult(key, "s", "A cap.", None, task, ("x",), ("stop",), p, "0", None, engine_s, "cpu")


def _cost() -> Cost:
    raws = [
        _raw("a1", "swap_obj", 100, 20, 2.0),
        _raw("a2", "swap_obj", 100, 20, 2.0),
        _raw("b1", "add_att", 100, 10, 1.0),
        _raw("p1", "paraphrase", 100, 30, 3.0),
    ]
    failed = [Rejection(RejectStage.generation, Reason.engine_timeout, unit_key="b2", task="add_att")]
    c = Cost.of_units({r.unit_key: "generate" for r in raws} | {"b2": "generate"}, raws, failed)
    c.valid.update({"swap_obj": 2, "add_att": 1})
    c.kept.update({"swap_obj": 2, "add_att": 1})
    return c


def test_a_type_pays_its_own_units_and_its_kept_rows_share_of_the_shared_tasks():
    rep = cost_report(_cost(), spent_in([]), None)
    assert rep["total"] | {} == {
        "units": 5,
        "tokens_in": 400,
        "tokens_out": 80,
        "engine_s": 8.0,
        "setup_s": 0.0,
        "failed": 1,
        "valid": 3,
        "kept": 3,
        "tokens_per_kept": 160.0,
        "tokens_out_per_kept": 26.7,
        "engine_s_per_kept": 2.6667,
        "money_per_1k_kept": None,
    }
    by_type = {t["type"]: t for t in rep["by_type"]}
    # swap_obj: its own 2 units (4 s) + 2/3 of the paraphrase's 3 s; add_att: 1 s + 1/3 of 3 s
    assert by_type["swap_obj"]["engine_s"] == pytest.approx(6.0)
    assert by_type["add_att"]["engine_s"] == pytest.approx(2.0)
    assert by_type["add_att"]["units"] == 2 and by_type["add_att"]["yield"] == 0.5  # the failed unit counts
    assert by_type["swap_obj"]["tokens_out_per_kept"] == pytest.approx((40 + 20) / 2)
    assert sum(t["engine_s"] for t in rep["by_type"]) == pytest.approx(rep["total"]["engine_s"])
    assert rep["notes"] and "engine.price" in rep["notes"][0]  # no price: said so, no money anywhere
    assert all(t["money_per_1k_kept"] is None for t in rep["by_type"])


def test_money_per_api_token_and_per_accelerator_hour():
    api = cost_report(_cost(), spent_in([]), Price(per_mtok_in=1.0, per_mtok_out=10.0))
    assert api["total"]["money"] == pytest.approx(400 / 1e6 * 1 + 80 / 1e6 * 10)
    hour = cost_report(_cost(), spent_in([]), Price(per_hour=3.6))
    by_type = {t["type"]: t for t in hour["by_type"]}
    assert by_type["swap_obj"]["money_per_1k_kept"] == pytest.approx(6.0 / 3600 * 3.6 / 2 * 1000)
    assert not hour["notes"]


def test_units_from_parts_before_engine_time_count_zero_and_are_named(tmp_path):
    c = Cost.of_units({"a": "generate"}, [_raw("a", "swap_obj", 10, 5, None)], [])
    rep = cost_report(c, spent_in([]), None)
    assert rep["total"]["unmetered"] == 1 and rep["total"]["engine_s"] == 0
    assert any("1 units come from raw parts written before" in n for n in rep["notes"])


def test_a_runs_own_share_is_read_from_the_files_it_committed(tmp_path):
    with RunStore(tmp_path) as store:
        store.write_part([_raw("a", "swap_obj", 10, 5, 1.5), _raw("b", "swap_obj", 10, 7, 0.5)])
        store.write_failures([Rejection(RejectStage.generation, Reason.engine_crash, unit_key="c", task="swap_obj")])
        own = spent_in((n, store.read_part(n)) for n in sorted(store.made))
    assert (own.units, own.tokens_in, own.tokens_out, own.engine_s, own.failed) == (3, 20, 12, 2.0, 1)
    with RunStore(tmp_path) as resumed:  # a rerun made nothing: its own share is nothing
        assert resumed.made == set()


def test_a_price_is_one_of_two_shapes_and_a_wrong_one_says_what_came_and_the_fix():
    ok = load_config(None, {"engine": {"price": {"per_hour": 2.5}}})
    assert ok.engine.price == Price(per_hour=2.5)
    with pytest.raises(ConfigError, match=r"engine\.price.*expected either.*got both.*Fix: keep the one"):
        load_config(None, {"engine": {"price": {"per_hour": 2.5, "per_mtok_in": 1.0}}})
    with pytest.raises(ConfigError, match=r"engine\.price.*expected per_mtok_in and per_mtok_out together.*Fix"):
        load_config(None, {"engine": {"price": {"per_mtok_in": 1.0}}})
    with pytest.raises(ConfigError, match=r"engine\.price\.per_hour"):
        load_config(None, {"engine": {"price": {"per_hour": -1}}})


def test_overlapping_calls_share_a_replicas_seconds_and_a_call_splits_its_by_tokens():
    t = iter([0.0, 0.0, 0.0, 2.0, 4.0])
    clock = ReplicaClock(lambda: next(t))
    a, b = clock.start(), clock.start()
    assert clock.stop(a) + clock.stop(b) == pytest.approx(4.0)  # busy 4 s in all, not 2 + 4
    cs = share([Completion("x", (), 0, 0, 0.0), Completion("y", (), 0, 0, 0.0)], 3.0, "cpu")
    assert [c.engine_s for c in cs] == [1.5, 1.5]  # no token counted: equal shares
    assert Counter(c.accelerator for c in cs) == {"cpu": 2}


def test_a_forecast_scales_the_samples_cost_to_the_whole_input_at_its_yields(tmp_path):
    from pipeline.run.estimate import Sample, lines, project

    price = Price(per_hour=3.6)
    summary = {"cost": cost_report(_cost(), spent_in([]), price)}
    f = project(Sample(inputs=40, rows=4, units_per_row=1.25, folder=tmp_path), summary, price)
    assert f["projected"]["units"] == 50 and f["projected"]["kept"] == 30
    assert f["projected"]["engine_s"] == pytest.approx(80.0)
    assert f["projected"]["money"] == pytest.approx(80.0 / 3600 * 3.6)
    by_type = {t["type"]: t for t in f["by_type"]}
    assert (by_type["swap_obj"]["kept"], by_type["swap_obj"]["yield"]) == (20, 1.0)
    text = "\n".join(lines(f))
    assert "a sample of 4 of 40 input rows (5 units, 3 kept rows)" in text and "Nothing was written to --out" in text
    # one-time work (a prompt prefix's KV, computed once a task and replica) is added once, not grown with the input
    summary["cost"]["total"]["setup_s"] = 2.0
    f = project(Sample(inputs=40, rows=4, units_per_row=1.25, folder=tmp_path), summary, price)
    assert f["projected"]["engine_s"] == pytest.approx((8.0 - 2.0) * 10 + 2.0)
    assert f["projected"]["money"] == pytest.approx(62.0 / 3600 * 3.6)
