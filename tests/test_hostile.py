"""A new user's hostile world, with real runs: folders that are not ours, a file as --out, empty input, a full
disk, damaged shards, unreadable folders. Each ends in one clear line and exit 2 (no traceback), or in a
valid dataset; nothing a user wrote is ever replaced or deleted."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import flows.generate  # noqa: F401 - Prefect configures its log handlers on import: here, not inside a captured test
from pipeline.cli import main
from pipeline.kinds.negatives import SCHEMA as NEGATIVES_SCHEMA
from pipeline.shards.writer import sha256_file
from tests.conftest import REPO, coco_captions, write_jsonl

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "contrastgen")
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def cli(*args: str, unprivileged: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real console script; ``unprivileged``: without root's right to ignore file permissions."""
    argv = [CLI, *map(str, args)]
    if unprivileged and os.geteuid() == 0:
        argv = NO_DAC + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def one_clear_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, and the last line of stderr is our error naming every needle."""
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("contrastgen: error: ") and "Fix:" in line, line
    for needle in needles:
        assert needle in line, line
    return line


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def users_folder(root: Path) -> Path:
    """A folder of another dataset: its own card and an Arrow file with a name contrastgen would use."""
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("# my dataset\nDo not touch.\n")
    with (
        pa.OSFile(str(root / "data" / "train-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, pa.schema([("x", pa.int64())])) as w,
    ):
        w.write_table(pa.table({"x": [1, 2, 3]}))
    return root


def test_a_folder_that_is_not_ours_is_refused_and_left_as_it_was(tmp_path):
    theirs = users_folder(tmp_path / "theirs")
    before = tree(theirs)
    inp = REPO / "data" / "sample_captions.jsonl"
    one_clear_line(cli("generate", "negatives", "--input", inp, "--out", theirs), str(theirs), "not one", "--overwrite")
    # --overwrite still never replaces files contrastgen did not write: README.md and data/ are taken
    one_clear_line(cli("generate", "negatives", "--input", inp, "--out", theirs, "--overwrite"), "README.md, data")
    assert tree(theirs) == before
    # a dataset of another kind is not this kind's either
    (tmp_path / "rat").mkdir()
    (tmp_path / "rat" / ".contrastgen").write_text(
        json.dumps({"format": "contrastgen.rationales/1", "contrastgen_version": "0.1.0"})
    )
    one_clear_line(cli("generate", "negatives", "--input", inp, "--out", tmp_path / "rat"), "contrastgen.rationales/1")


def test_out_naming_a_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    res = cli(
        "generate", "negatives", "--input", REPO / "data" / "sample_captions.jsonl", "--out", tmp_path / "notes.txt"
    )
    one_clear_line(res, "notes.txt", "regular file")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    verbose = cli(
        "generate",
        "negatives",
        "--input",
        REPO / "data" / "sample_captions.jsonl",
        "--out",
        tmp_path / "notes.txt",
        "--verbose",
    )
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr  # --verbose shows where it came from


def _generate(capsys, *args: str) -> tuple[int, dict]:
    """``contrastgen generate negatives ... --json`` in this process (it reuses the session's Ray and engine actor);
    the summary gets the run's stderr under "stderr"."""
    capsys.readouterr()
    rc = main(["generate", "negatives", *args, "--json"])
    out, err = capsys.readouterr()
    if not out.strip():
        return rc, {"stderr": err}
    assert len(out.strip().splitlines()) == 1, out  # --json: one clean object on stdout, progress on stderr
    return rc, {**json.loads(out), "stderr": err}


def test_overwrite_writes_beside_user_files_and_they_survive_reruns(tmp_path, ray_session, prefect_session, capsys):
    out = tmp_path / "mixed"
    (out / "extra").mkdir(parents=True)
    (out / "notes.md").write_text("my notes")
    (out / "extra" / "table.csv").write_text("a,b\n")
    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(2))
    args = ["--input", str(inp), "--out", str(out), "--types", "swap_obj"]
    assert _generate(capsys, *args)[0] == 2  # not ours, and no --overwrite
    rc, first = _generate(capsys, *args, "--overwrite")
    assert rc == 0 and first["units"] == 4
    # the final progress lines (stderr is not a terminal: plain lines): units, valid/rejected by type, the filter
    assert re.search(
        r"generate negatives: 4/4 units \(100%\), 1 part, \d+ tok/s; valid \d+, rejected \d+ .*swap_obj \d+/\d+",
        first["stderr"],
    ), first["stderr"]
    assert re.search(r"filter: 2/2 block passes .*kept \d+", first["stderr"]), first["stderr"]
    # files a user adds inside the dataset, even with names a dataset uses for its own
    (out / "data" / "mine.arrow").write_bytes(b"my bytes")
    (out / "plots" / "mine.png").write_bytes(b"my picture")
    (out / "rejected" / "notes.txt").write_text("why")
    users = {
        p: tree(out)[p]
        for p in ("notes.md", "extra/table.csv", "data/mine.arrow", "plots/mine.png", "rejected/notes.txt")
    }
    rc, again = _generate(capsys, *args)  # now ours: no --overwrite needed
    assert rc == 0 and again["generated"] == 0
    write_jsonl(inp, coco_captions(3))  # the input grows: an append release
    rc, grown = _generate(capsys, *args)
    assert rc == 0 and grown["generated"] == 2 and list((out / "data").glob("*-r001-*.arrow"))
    cfg = tmp_path / "filters.yaml"  # other filters: the folder is published whole again (old shards removed)
    cfg.write_text("filters:\n  negatives:\n    dedup: {near_threshold: 0.9}\n")
    rc, whole = _generate(capsys, *args, "--config", str(cfg))
    assert rc == 0 and not list((out / "data").glob("*-r001-*.arrow"))
    now = tree(out)
    assert {p: now[p] for p in users} == users


def test_empty_input_finishes_with_a_valid_empty_dataset(tmp_path, ray_session, prefect_session, capsys):
    import datasets

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "e"
    rc, s = _generate(capsys, "--input", str(empty), "--out", str(out))
    assert rc == 2 and s["kept"] == 0 and "no row" in s["empty"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(x["split"] for x in manifest["shards"] if x["split"] in ("train", "test")) == ["test", "train"], (
        "expected an empty split to be one empty shard, for train and for test"
    )
    for shard in manifest["shards"]:
        if shard["split"] in ("train", "test"):
            ds = datasets.Dataset.from_file(str(out / shard["path"]))  # what load_dataset would map
            assert ds.num_rows == 0 and ds.column_names == NEGATIVES_SCHEMA.names
    assert main(["inspect", str(out)]) == 0
    # every row rejected: the rejects are the dataset's `rejected` config, loadable with `datasets`
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "caption": " "}, {"id": "b"}, {"id": "c", "caption": 7}])
    rc, s = _generate(capsys, "--input", str(bad), "--out", str(tmp_path / "b"))
    assert rc == 2 and s["input_rejected"] == 3 and "3 rejected" in s["empty"]
    rejected = datasets.load_dataset(str(tmp_path / "b"), "rejected")["rejected"]
    assert sorted(rejected["reason"]) == ["empty_caption", "missing_field", "wrong_type"]


def _mount_tmpfs(path: Path, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if res.returncode != 0:  # not root (CI runs as root): a size-limited file system cannot be made here
        pytest.skip(f"cannot mount a small tmpfs to fill: {res.stderr.strip()}")


def test_disk_full_is_one_line_and_a_rerun_resumes(negatives_run, tmp_path):
    cfg, _ = negatives_run
    disk = tmp_path / "disk"
    src = cfg.output.dir
    used = sum(-(-p.stat().st_size // 4096) * 4096 for p in (src / "raw").glob("part-*.arrow"))
    _mount_tmpfs(disk, used + 3 * 4096)  # room for the raw parts and the marker, not for the shards and card
    try:
        (disk / "ds").mkdir()
        shutil.copytree(src / "raw", disk / "ds" / "raw")
        shutil.copy(src / ".contrastgen", disk / "ds" / ".contrastgen")
        args = ["generate", "negatives", "--input", cfg.input.path, "--out", disk / "ds", "--json"]
        one_clear_line(cli(*args), "No space left on device", str(disk / "ds"))
        assert not list((disk / "ds").rglob(".*.tmp-*"))  # a failed write leaves no temp file
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        res = cli(*args)
        assert res.returncode == 0, res.stderr[-3000:]
        s = json.loads(res.stdout.strip().splitlines()[-1])
        assert s["generated"] == 0 and s["reused"] == s["units"] and s["kept"] > 0
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_a_damaged_shard_is_named_by_every_reader(negatives_run, tmp_path):
    cfg, _ = negatives_run
    ds = tmp_path / "ds"
    shutil.copytree(cfg.output.dir, ds)
    manifest = json.loads((ds / "manifest.json").read_text())
    damaged = {}
    for shard in manifest["shards"]:
        if shard["split"] in damaged or not shard["rows"]:
            continue
        path = ds / shard["path"]
        path.write_bytes(
            path.read_bytes()[: shard["num_bytes"] // 2]
        )  # truncated, as a full disk or a bad copy leaves it
        damaged[shard["split"]] = shard["path"]
    assert set(damaged) == {"train", "test", "rejected"}
    one_clear_line(cli("inspect", ds), damaged["train"], "truncated")
    one_clear_line(cli("train", ds, "--out", tmp_path / "m"), damaged["train"], "manifest.json")
    one_clear_line(cli("evaluate", tmp_path / "no-model", ds), damaged["test"])
    # `filter` reads DIR's raw parts (checked against the manifest) and its input, not its shards: it rebuilds a
    # dataset whose shards were damaged
    res = cli("filter", ds, "--out", tmp_path / "f")
    assert res.returncode == 0, res.stderr[-3000:]
    rebuilt = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert rebuilt["shards"] and all(sha256_file(tmp_path / "f" / s["path"]) == s["sha256"] for s in rebuilt["shards"])
    rows = {s["path"]: s["sha256"] for s in manifest["shards"] if s["split"] in ("train", "test")}
    assert {s["path"]: s["sha256"] for s in rebuilt["shards"] if s["split"] in ("train", "test")} == rows


def test_an_unreadable_folder_is_one_line(negatives_run, tmp_path):
    cfg, _ = negatives_run
    ds = tmp_path / "ds"
    shutil.copytree(cfg.output.dir, ds)
    ds.chmod(0)
    try:
        one_clear_line(cli("inspect", ds, unprivileged=True), "Permission denied")
        one_clear_line(cli("train", ds, "--out", tmp_path / "m", unprivileged=True), "Permission denied")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0)
        one_clear_line(
            cli(
                "generate",
                "negatives",
                "--input",
                REPO / "data" / "sample_captions.jsonl",
                "--out",
                locked,
                unprivileged=True,
            ),
            str(locked),
            "permission denied",
        )
    finally:
        ds.chmod(0o755)
