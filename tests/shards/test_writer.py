import pyarrow as pa
import pytest

from pipeline.shards.writer import ShardWriter, sha256_file


def _read(path):
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_stream(src).read_all()


def test_deterministic_names_rows_and_hashes(tmp_path):
    table = pa.table({"x": list(range(5))})
    with ShardWriter(tmp_path, "train", 2, total_rows=5) as w:
        w.write(table)
    shards = w.finalize()
    assert [s.path for s in shards] == [f"data/train-0000{i}-of-00003.arrow" for i in range(3)]
    assert [s.rows for s in shards] == [2, 2, 1]
    assert all(s.sha256 == sha256_file(tmp_path / s.path) for s in shards)
    assert pa.concat_tables([_read(tmp_path / s.path) for s in shards]).equals(table)
    assert not list(tmp_path.glob("data/.*"))  # no temp files left


def test_empty_split_still_gets_one_readable_shard(tmp_path):
    with ShardWriter(tmp_path, "test", 10, total_rows=0) as w:
        w.write(pa.table({"x": pa.array([], pa.int64())}))
    (s,) = w.finalize()
    assert s.rows == 0 and _read(tmp_path / s.path).num_rows == 0


def test_row_count_mismatch_is_an_error(tmp_path):
    with ShardWriter(tmp_path, "train", 10, total_rows=3) as w:
        w.write(pa.table({"x": [1]}))
    with pytest.raises(ValueError, match="expected 3 rows, wrote 1"):
        w.finalize()
