import pytest

from pipeline.errors import RunLockedError
from pipeline.records import Provenance, RawResult
from pipeline.run.store import RunStore


def _raw(key):
    p = Provenance("embedded", "m", "sha", "edit", 0.7, 0.95, 40, 1, 10, 5, 0.1)
    return RawResult(key, "s", "A cap.", None, "swap_obj", ("a <-> b",), ("stop",), p, "0")


def test_second_run_on_same_dir_fails_at_once(tmp_path):
    with RunStore(tmp_path):
        with pytest.raises(RunLockedError, match="another contrastgen run"):
            RunStore(tmp_path).__enter__()
    with RunStore(tmp_path):  # released on exit
        pass
    RunStore(tmp_path).ensure_free()  # a probe that leaves the lock free
    with RunStore(tmp_path):
        with pytest.raises(RunLockedError):
            RunStore(tmp_path).ensure_free()


def test_parts_are_content_addressed_and_resume_reads_keys(tmp_path):
    with RunStore(tmp_path) as store:
        a = store.write_part([_raw("k2"), _raw("k1")])
        b = store.write_part([_raw("k1"), _raw("k2")])
        assert a == b  # same units -> same name and bytes
        assert store.done(["k1", "k3"]).tolist() == [True, False]  # the index grows with each commit
        store.write_part([_raw("k3")])
        assert [r.unit_key for r in store.read_raw(["k1", "k3"])] == ["k1", "k3"]
        assert len(store.parts()) == 2
    with RunStore(tmp_path) as again:  # a rerun builds its index from the parts on disk
        assert again.done(["k1", "k2", "k3", "k4"]).tolist() == [True, True, True, False]
        assert [r.unit_key for r in again.read_raw(["k3"])] == ["k3"]


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / "raw").mkdir()
    stale = tmp_path / "raw" / ".part-x.arrow.tmp-123"
    stale.write_bytes(b"partial")
    with RunStore(tmp_path) as store:
        assert not stale.exists() and not store.done(["k1"]).any()


def test_a_raw_part_of_a_version_before_groups_is_read_as_ungrouped(tmp_path):
    """A run made before input groups resumes: its parts lack the group column and call the source text
    ``caption``, its ungrouped keys are the same."""
    from pipeline.errors import DatasetError
    from pipeline.shards.writer import read_stream, write_atomic

    with RunStore(tmp_path) as store:
        store.write_part([_raw("k1"), _raw("k2")])
    (part,) = (tmp_path / "raw").glob("part-*.arrow")
    old = read_stream(part).drop_columns(["group", "engine_s", "accelerator"])  # as the earlier versions wrote it
    write_atomic(part, old.rename_columns(["caption" if c == "source_text" else c for c in old.column_names]))
    with RunStore(tmp_path) as again:
        assert again.done(["k1", "k2", "k3"]).tolist() == [True, True, False]
        got = [(r.unit_key, r.source_text, r.group, r.engine_s) for r in again.read_raw(["k1", "k2"])]
        assert got == [("k1", "A cap.", None, None), ("k2", "A cap.", None, None)]  # engine time unknown (issue 35)
        assert again.committed_units() == 2
    write_atomic(part, read_stream(part).drop_columns(["caption"]))  # any other layout is still refused
    with RunStore(tmp_path) as damaged, pytest.raises(DatasetError, match="expected the raw-part schema"):
        damaged.done(["k1"])
