"""Appending to a published dataset never contradicts it: finalize on hand-made raw parts (the parsers, filters,
publishing and card are real; the engine's answers are written here, so the duplicate is exact)."""

from __future__ import annotations

import json

from pipeline import __version__
from pipeline.config import load_config
from pipeline.kinds import KINDS
from pipeline.kinds.base import row_id
from pipeline.records import Provenance, RawResult
from pipeline.run import generate as steps
from pipeline.run.common import Timing
from pipeline.run.store import store_of
from pipeline.shards.card import load_manifest
from pipeline.shards.writer import read_shard

CAPTION, NEGATIVE, PARAPHRASE = (
    "a dog sits on a red sofa",
    "a cat sits on a red sofa",
    "a dog is sitting on a red couch",
)
OFF = {"enabled": False}


def _release(tmp_path, captions: list[dict], run_id: str, kind=None, block_sources: int = 4096) -> dict:
    """One run's finalize over ``captions``, each answered the same: its paraphrase and NEGATIVE."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(c) + "\n" for c in captions), encoding="utf-8")
    cfg = load_config(
        None,
        {
            "input": {"path": inp},
            "output": {"dir": tmp_path / "ds", "block_sources": block_sources},
            "negatives": {"types": ["replace_obj"], "mode": "rewrite"},
            "filters": {"negatives": {"semantic": OFF, "blind": OFF, "propensity": OFF, "surface": OFF}},
        },
    )
    kind = kind or KINDS["negatives"]
    with store_of(cfg, "negatives") as store:
        ctx = steps.start(kind, cfg)
        stage = steps.plan_stage(kind, ctx, store, "generate")
        raws = []
        for u in (u for chunk in stage.pending for u in chunk):
            text = PARAPHRASE if u.task == "paraphrase" else NEGATIVE
            prov = Provenance("embedded", "m", u.prompt_sha, kind.mode(u, cfg), 0.7, 0.95, 40, u.seed, 10, 5, 0.1)
            raws.append(
                RawResult(u.key, u.source.id, u.source.text, None, u.task, (text,), ("stop",), prov, __version__)
            )
        if raws:
            store.write_part(raws)
        # in the driver (its own walk): a kind made here is not the one a Ray task would look up by name
        steps.finalize(kind, ctx, store, Timing(), run_id, walk=steps.planned_blocks(kind, ctx, store))
    return load_manifest(tmp_path / "ds")


def _rows(root, manifest, split: str) -> list[dict]:
    return [r for s in manifest["shards"] if s["split"] == split for r in read_shard(root, s).to_pylist()]


def test_a_new_row_that_repeats_a_published_one_is_rejected_naming_it(tmp_path):
    first = _release(tmp_path, [{"id": "b", "caption": CAPTION}], "run-0")
    root = tmp_path / "ds"
    published = [r["id"] for sp in ("train", "test") for r in _rows(root, first, sp)]
    assert len(published) == 1
    # A new caption with the same text: its row repeats the published one, with a smaller id (so a whole re-dedup
    # in id order would keep the newcomer and reject the published row).
    new_id = next(f"a{i}" for i in range(1000) if row_id(f"a{i}", "replace_obj", NEGATIVE) < published[0])
    second = _release(tmp_path, [{"id": "b", "caption": CAPTION}, {"id": new_id, "caption": CAPTION}], "run-1")

    data = [r for sp in ("train", "test") for r in _rows(root, second, sp)]
    assert [r["id"] for r in data] == published  # the published row stays, alone
    rejected = _rows(root, second, "rejected")
    dup = [r for r in rejected if r["source_id"] == new_id and r["stage"] == "filter"]
    assert [(r["reason"], r["detail"]) for r in dup] == [
        ("duplicate_of_published", f"repeats published row {published[0]}")
    ]
    assert not [r for r in rejected if r["source_id"] == "b" and r["stage"] == "filter"]  # never published and rejected
    assert [r["mode"] for r in second["publish"]["releases"]] == ["whole", "append"]
    assert second["counts"]["filtered"] == 1 and second["counts"]["rejected_by_reason"] == {"duplicate_of_published": 1}
    cost = second["cost"]  # the appended dataset's whole cost: the published release's units too; this run's apart
    assert (cost["total"]["units"], cost["total"]["tokens_out"], cost["this_run"]["units"]) == (4, 20, 2)
    assert cost["total"]["unmetered"] == 4  # hand-made parts have no engine time, as an earlier version's: named
    assert any(n.startswith("4 units come from raw parts written before") for n in cost["notes"])

    third = _release(tmp_path, [{"id": "b", "caption": CAPTION}, {"id": new_id, "caption": CAPTION}], "run-2")
    assert third["shards"] == second["shards"]  # a rerun adds nothing, and says the same
    assert {k: v for k, v in third["counts"].items() if k not in ("generated", "reused")} == {
        k: v for k, v in second["counts"].items() if k not in ("generated", "reused")
    }


def test_a_plan_newer_than_the_manifest_is_not_taken_for_the_published_one(tmp_path):
    """A run killed after it replaced plan.arrow and before it wrote manifest.json: the next run must not take the
    killed run's units for decided ones (their rows were never published); it publishes the folder whole, and the
    dataset is the one the killed run would have made."""
    from pipeline.shards.publish import previous_release

    two = [{"id": "b", "caption": CAPTION}, {"id": "c", "caption": CAPTION}]
    first = _release(tmp_path, two[:1], "run-0")
    root, sha = tmp_path / "ds", first["publish"]["settings_sha"]
    old_manifest = (root / "manifest.json").read_bytes()

    def outcome(m):  # each source's rows, published or rejected (a whole release names no published duplicate)
        return sorted(
            (r["source_id"], sp == "rejected") for sp in ("train", "test", "rejected") for r in _rows(root, m, sp)
        )

    second = _release(tmp_path, two, "run-1")  # then "killed" before its manifest: the first one is back
    expected = outcome(second)
    (root / "manifest.json").write_bytes(old_manifest)
    assert previous_release(root, sha) is None  # the plan on disk is not the one the manifest lists
    third = _release(tmp_path, two, "run-2")
    assert third["publish"]["releases"][-1]["mode"] == "whole"
    assert outcome(third) == expected and any(src == "c" for src, _ in expected)


def test_finalize_assembles_each_block_once(tmp_path):
    """Pass 2 reads the rows pass 1 assembled (spilled to the spool) instead of assembling the block again: parsing,
    the word-class check and mining run once per block. The spool is gone afterwards."""
    base = type(KINDS["negatives"])
    calls: list[int] = []

    class Counting(base):  # type: ignore[misc, valid-type]
        def assemble(self, ctx, raws):
            calls.append(len(raws))
            return super().assemble(ctx, raws)

    captions = [{"id": f"c{i}", "caption": CAPTION} for i in range(3)]
    manifest = _release(tmp_path, captions, "run-0", kind=Counting(), block_sources=1)
    assert calls == [2, 2, 2]  # three blocks of one caption (its paraphrase and its negative), each assembled once
    counts = manifest["counts"]  # pass 2 applied the decisions made across blocks: one row, two duplicates of it
    assert (counts["kept"], counts["filtered"]) == (1, 2), counts
    assert not (tmp_path / "ds" / steps.SPOOL).exists()
