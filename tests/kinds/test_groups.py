"""Grouped inputs (issue 32): human captions of one image are positives of each other. The group rides from the
input through the unit key and the raw part to the rows, decides the split, reaches the card, the manifest, the
view and the trainer; ungrouped runs keep their keys and splits."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow as pa
import pytest

from bench.outside.rules import coco_grouped_rows
from pipeline.config import load_config
from pipeline.kinds import negatives as task
from pipeline.records import CaptionRecord, Provenance, RawResult
from pipeline.shards.publish import split_key, split_of
from pipeline.shards.schema import raw_results, raw_table
from tests.conftest import SHARED, write_jsonl

COCO = SHARED / "coco_captions" / "test.jsonl"


def test_the_group_enters_the_unit_key_only_where_there_is_one():
    cfg = load_config(None, {"negatives": {"types": ["swap_obj"]}})
    tpl = task.templates_for(cfg)["swap_obj"]
    plain = CaptionRecord("1", "A dog on a sofa.", "a.jpg")
    grouped = replace(plain, group="A")
    from pipeline.kinds.base import unit_key

    assert task.unit_key(plain, "swap_obj", tpl, cfg) == unit_key(
        ["1", "A dog on a sofa.", "a.jpg"], "swap_obj", tpl.sha256, cfg.sampling, cfg, mode="edit"
    )  # as before groups
    assert task.unit_key(grouped, "swap_obj", tpl, cfg) != task.unit_key(plain, "swap_obj", tpl, cfg)
    assert task.unit_key(grouped, "swap_obj", tpl, cfg) != task.unit_key(
        replace(plain, group="B"), "swap_obj", tpl, cfg
    )


def test_raw_parts_carry_the_group_and_parts_of_older_runs_read_without_one():
    prov = Provenance("embedded", "m", "sha", "edit", 0.5, 0.75, 16, 1, 10, 5, 0.25)  # exact in float32
    raw = RawResult("k", "1", "A dog.", None, "swap_obj", ("dog <-> sofa",), ("stop",), prov, "0", "A")
    table = raw_table([raw])
    assert raw_results(table) == [raw]
    older = table.drop_columns(["group"])  # a raw part written before groups existed
    assert raw_results(older) == [replace(raw, group=None)]


def test_the_captions_of_a_group_share_a_split():
    class R:
        def __init__(self, source_id, group=None):
            self.source_id, self.group = source_id, group

    rows = [R(f"s{i}", "img-1") for i in range(50)]
    assert {split_of(split_key(r), 0.5) for r in rows} == {split_of("img-1", 0.5)}
    assert [split_key(R(f"s{i}")) for i in range(3)] == ["s0", "s1", "s2"]  # ungrouped: by source, as before


def test_coco_grouped_rows_are_flat_distinct_and_skip_the_transfer_images():
    rows = coco_grouped_rows(COCO, skip_images=500, images=3)
    first = json.loads(COCO.read_text().splitlines()[500])
    assert {r["group"] for r in rows} == {r["image"] for r in rows} and len({r["group"] for r in rows}) == 3
    assert rows[0]["group"] == first["file_name"] and rows[0]["caption"] == first["captions"]["object"][0].strip()
    assert len({r["id"] for r in rows}) == len(rows)
    for g in {r["group"] for r in rows}:
        caps = [r["caption"].lower() for r in rows if r["group"] == g]
        assert len(caps) == len(set(caps)) >= 2


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory, ray_session, prefect_session):
    """A real run on two COCO images' human captions with ``input.group_column: group`` and three paraphrase
    candidates a caption (SmolLM2 through Ray)."""
    from flows.generate import generate_flow

    root = tmp_path_factory.mktemp("grouped")
    inp = write_jsonl(root / "in.jsonl", [r for r in coco_grouped_rows(COCO, skip_images=700, images=2)])
    cfg = load_config(
        None,
        {
            "input": {"path": inp, "group_column": "group"},
            "output": {"dir": root / "ds"},
            "negatives": {"types": ["swap_obj", "replace_obj"], "paraphrase_candidates": 3},
            "sampling": {"max_tokens": 24},
        },
    )
    return cfg, generate_flow("negatives", cfg.model_dump(mode="json"))


def test_a_grouped_run_writes_groups_and_the_trainer_pairs_human_views(grouped_run):
    from pipeline.train.data import groups_from_table, read_split
    from pipeline.view.data import Dataset, Query

    cfg, summary = grouped_run
    out = cfg.output.dir
    inputs = [json.loads(line) for line in cfg.input.path.read_text().splitlines()]
    group_of = {r["id"]: r["group"] for r in inputs}
    tables = {
        s: pa.concat_tables(
            pa.ipc.open_stream(p.read_bytes()).read_all() for p in sorted((out / "data").glob(f"{s}-*.arrow"))
        )
        for s in ("train", "test")
        if list((out / "data").glob(f"{s}-*.arrow"))
    }
    split_of_group = {}
    for split, t in tables.items():
        for sid, g in zip(t["source_id"].to_pylist(), t["group"].to_pylist()):
            assert g == group_of[sid]  # every row carries its caption's group
            assert split_of_group.setdefault(g, split) == split  # a group's rows are all in one split
    manifest = json.loads((out / "manifest.json").read_text())
    sizes = [sum(r["group"] == g for r in inputs) for g in dict.fromkeys(group_of.values())]
    assert manifest["groups"] == {
        "groups": 2,
        "grouped_captions": len(inputs),
        "largest": max(sizes),
        "views_per_caption": round(sum(s * (s - 1) for s in sizes) / len(inputs), 2),
    }
    card = (out / "README.md").read_text()
    assert "Groups (human views)" in card and "`group`" in card
    split = next(s for s in ("train", "test") if s in tables)
    groups, _ = groups_from_table(read_split(out, split), max_negatives=8)
    assert groups and all(g.group in split_of_group for g in groups)
    views = {r["caption"] for r in inputs}
    assert any(p in views for g in groups for p in g.positives)  # human views are positives
    assert all(p != g.anchor for g in groups for p in g.positives)
    from pipeline.run.store import RunStore

    samples = {r.source_id: r.texts for r in RunStore(out).read_raw() if r.task == "paraphrase"}
    assert samples and all(len(t) == 3 for t in samples.values())  # negatives.paraphrase_candidates
    for t in tables.values():  # each kept positive is one of its caption's own samples
        for sid, pos in zip(t["source_id"].to_pylist(), t["positive"].to_pylist()):
            assert pos is None or pos in samples[sid]
    page = Dataset(out).page(Query(split=split, size=5))
    assert page.rows and all(r["group"] in split_of_group for r in page.rows)
    from fastapi.testclient import TestClient

    from pipeline.view import build_app

    html = TestClient(build_app(out)).get("/rows", params={"split": split}).text
    assert f'group <span class="group">{page.rows[0]["group"]}</span>' in html
