"""The README's example commands run as written (with `out` in a temp folder)."""

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_readme_quick_start_is_the_two_make_targets():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1)
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_readme_example_commands_run(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- readme-example -->\n```bash\n(.*?)```", readme, re.S).group(1)
    bindir = Path(sys.executable).parent
    outputs = []
    for line in block.strip().splitlines():
        argv = [str(tmp_path / "out") if a == "out" else a for a in shlex.split(line)]
        argv[0] = str(bindir / argv[0])
        res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        if argv[1] == "train":  # its progress: the final plain line (stderr is not a terminal here)
            assert re.search(r"train: (\d+)/\1 steps \(100%\), .*loss \d", res.stderr), res.stderr[-3000:]
        outputs.append(res.stdout)
    summary = json.loads(outputs[0].strip().splitlines()[-1])
    assert summary["units"] == 2 * 3 and summary["generated"] == 6
    assert "Funnel" in outputs[1] and "Per type" in outputs[1]


def test_cli_reports_errors_clearly(tmp_path):
    cli = str(Path(sys.executable).parent / "contrastgen")
    res = subprocess.run([cli, "inspect", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "expected a contrastgen dataset" in res.stderr
    res = subprocess.run(
        [cli, "generate", "negatives", "--input", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "file not found" in res.stderr and "x.jsonl" in res.stderr


def test_second_cli_run_on_a_locked_dir_fails_at_once(tmp_path):
    from pipeline.run.store import RunStore

    cli = str(Path(sys.executable).parent / "contrastgen")
    with RunStore(tmp_path / "o", "negatives"):  # a run in progress (it claimed the folder)
        t0 = time.perf_counter()
        res = subprocess.run(
            [
                cli,
                "generate",
                "negatives",
                "--input",
                str(REPO / "data" / "sample_captions.jsonl"),
                "--out",
                str(tmp_path / "o"),
            ],
            capture_output=True,
            text=True,
        )
        assert time.perf_counter() - t0 < 20  # no Ray, no Prefect, no model start-up first
    assert res.returncode == 2 and "another contrastgen run" in res.stderr


def test_readme_train_example_runs(negatives_run, tmp_path):
    """The README's training commands, on the session's real dataset instead of demo_out."""
    cfg, _ = negatives_run
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- readme-train-example -->\n```bash\n(.*?)```", readme, re.S).group(1)
    swap = {"demo_out": str(cfg.output.dir), "demo_model": str(tmp_path / "demo_model")}
    bindir = Path(sys.executable).parent
    outputs = []
    for line in block.strip().splitlines():
        argv = [swap.get(a, a) for a in shlex.split(line)]
        argv[0] = str(bindir / argv[0])
        res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        if argv[1] == "train":  # its progress: the final plain line (stderr is not a terminal here)
            assert re.search(r"train: (\d+)/\1 steps \(100%\), .*loss \d", res.stderr), res.stderr[-3000:]
        outputs.append(res.stdout)
    assert "before" in outputs[0] and "after" in outputs[0] and "retention" in outputs[0]
    report = json.loads(outputs[1].strip().splitlines()[-1])
    assert report["overall"]["rows"] > 0 and 0 <= report["overall"]["acc"] <= 100
