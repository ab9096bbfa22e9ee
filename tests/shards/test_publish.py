"""Incremental publishing: whole the first time, then only new rows as new shards; old shards never rewritten."""

from __future__ import annotations

import json

import pyarrow as pa

from pipeline.shards.publish import publish, published_splits
from pipeline.shards.writer import read_stream, sha256_file, write_bytes_atomic


def _tables(ids: list[str], rejected: list[str]) -> dict[str, pa.Table]:
    rej = {c: pa.array([None] * len(rejected), pa.string()) for c in ("stage", "source_id", "task", "unit_key", "file")}
    rej.update(
        reason=pa.array(["too_short"] * len(rejected)),
        raw=pa.array(rejected),
        line=pa.array([None] * len(rejected), pa.int64()),
    )
    return {
        "train": pa.table({"id": ids, "text": [f"t{i}" for i in ids]}),
        "test": pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
        "rejected": pa.table(rej),
    }


def _commit(root, shards, published) -> None:
    """What a finalize does after publishing: the manifest is the commit point."""
    write_bytes_atomic(
        root / "manifest.json", json.dumps({"shards": [s.__dict__ for s in shards], "publish": published}).encode()
    )


def _hashes(root) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.glob("*/*.arrow"))}


def test_first_publish_is_whole_then_reruns_append_only_new_rows(tmp_path):
    shards, pub = publish(tmp_path, _tables(["a", "b", "c"], ["x"]), 2, "s1", "run-1")
    _commit(tmp_path, shards, pub)
    assert published_splits(shards) == {"train": 3, "test": 0} and [r["mode"] for r in pub["releases"]] == ["whole"]
    first = _hashes(tmp_path)

    again, pub2 = publish(tmp_path, _tables(["a", "b", "c"], ["x"]), 2, "s1", "run-2")  # nothing new: no write
    assert again == shards and pub2["releases"] == pub["releases"] and _hashes(tmp_path) == first

    grown, pub3 = publish(tmp_path, _tables(["a", "b", "c", "d", "e"], ["x", "y"]), 2, "s1", "run-3")
    _commit(tmp_path, grown, pub3)
    now = _hashes(tmp_path)
    assert {k: now[k] for k in first} == first  # old shards untouched
    new = sorted(set(now) - set(first))
    assert new == ["data/train-r001-00000-of-00001.arrow", "rejected/rejected-r001-00000-of-00001.arrow"]
    assert read_stream(tmp_path / new[0]).column("id").to_pylist() == ["d", "e"]
    assert read_stream(tmp_path / new[1]).column("raw").to_pylist() == ["y"]
    assert pub3["releases"][-1] == {
        **pub3["releases"][-1],
        "release": 1,
        "run_id": "run-3",
        "mode": "append",
        "added": {"train": 2, "test": 0, "rejected": 1},
    }
    assert published_splits(grown) == {"train": 5, "test": 0}


def test_changed_settings_publish_whole_again(tmp_path):
    shards, pub = publish(tmp_path, _tables(["a", "b"], []), 10, "s1", "run-1")
    _commit(tmp_path, shards, pub)
    publish(tmp_path, _tables(["a", "b", "c"], []), 10, "s1", "run-2")  # a crash before the manifest: unlisted shards
    shards, pub = publish(tmp_path, _tables(["b"], []), 10, "s2", "run-3")  # stricter filters: b only, whole
    assert [r["mode"] for r in pub["releases"]] == ["whole"] and published_splits(shards)["train"] == 1
    assert sorted(_hashes(tmp_path)) == [
        "data/test-00000-of-00001.arrow",
        "data/train-00000-of-00001.arrow",
        "rejected/rejected-00000-of-00001.arrow",
    ]  # the r001 leftovers are gone


def test_files_contrastgen_did_not_write_are_never_deleted(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.arrow").write_bytes(b"a user's file")
    shards, pub = publish(tmp_path, _tables(["a"], []), 10, "s1", "run-1")
    _commit(tmp_path, shards, pub)
    assert (
        tmp_path / "data" / "mine.arrow"
    ).read_bytes() == b"a user's file"  # not listed, not in the ledger: not ours
    shards, pub = publish(tmp_path, _tables(["a", "b"], []), 1, "s2", "run-2")  # whole again, more shards
    _commit(tmp_path, shards, pub)
    publish(tmp_path, _tables(["a"], []), 10, "s3", "run-3")  # whole again: the two-shard release's files go
    assert (tmp_path / "data" / "mine.arrow").read_bytes() == b"a user's file"
    assert not (tmp_path / "data" / "train-00001-of-00002.arrow").exists()


def _spools(root, ids_by_block: list[list[str]]) -> dict:
    """Rows gathered block by block in on-disk spools, as a finalize writes them."""
    from pipeline.shards.writer import Spool

    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    out = {split: Spool(root / ".spool" / f"{split}.arrow", schema) for split in ("train", "test")}
    for ids in ids_by_block:
        out["train"].write(pa.table({"id": ids, "text": [f"t{i}" for i in ids]}, schema=schema))
        out["test"].write(schema.empty_table())
    return out


def test_spools_fill_shards_across_blocks_and_append_only_fresh_rows(tmp_path):
    """Blocks of 2, 3 and 1 rows become shards of 4 and 2 (a shard is not cut at a block's end); an empty split
    is one empty shard; a later publish of the spooled rows appends only the ids no shard holds."""
    root = tmp_path / "ds"
    root.mkdir()
    shards, pub = publish(root, _spools(tmp_path / "a", [["a", "b"], ["c", "d", "e"], ["f"]]), 4, "s1", "run-1")
    _commit(root, shards, pub)
    assert [(s.path, s.rows) for s in shards] == [
        ("data/train-00000-of-00002.arrow", 4),
        ("data/train-00001-of-00002.arrow", 2),
        ("data/test-00000-of-00001.arrow", 0),
    ]
    assert read_stream(root / shards[1].path).column("id").to_pylist() == ["e", "f"]
    grown, pub2 = publish(root, _spools(tmp_path / "b", [["a", "g"], ["c", "h"]]), 4, "s1", "run-2")
    assert [(s.path, s.rows) for s in grown[len(shards) :]] == [("data/train-r001-00000-of-00001.arrow", 2)]
    assert read_stream(root / grown[-1].path).column("id").to_pylist() == ["g", "h"]
    assert pub2["releases"][-1]["added"] == {"train": 2, "test": 0}
