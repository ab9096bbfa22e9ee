"""Session fixtures: real Ray, real Prefect (test harness), the real embedded model loaded once."""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A `datasets` cache of this session's own: pytest reuses its tmp paths (pytest-of-root/pytest-N), and a dataset
# loaded from a reused path could come back from an earlier session's cache instead of from the files written now.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="contrastgen-hf-datasets-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], True)
# The key the session's `contrastgen serve` requires and the openai engine sends (set before Ray starts, so its
# workers inherit it). A developer's own OPENAI_API_KEY is used as is (and needed for an external server).
os.environ.setdefault("OPENAI_API_KEY", "contrastgen-test-" + os.urandom(8).hex())

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def coco_captions(n: int, offset: int = 0) -> list[dict]:
    """Real COCO-train captions from ../shared (first caption of each image)."""
    path = SHARED / "coco_captions" / "test.jsonl"
    assert path.exists(), f"expected the shared seed data at {path}; tests read real COCO captions from there"
    rows = []
    with path.open() as fh:
        for line in fh:
            r = json.loads(line)
            rows.append(
                {
                    "id": r["file_name"].rsplit("_", 1)[-1].split(".")[0],
                    "caption": r["captions"]["object"][0],
                    "image": r["file_name"],
                }
            )
    return rows[offset : offset + n]


def assert_rerun_makes_no_llm_call(kind: str, run, monkeypatch) -> dict:
    """Rerun a finished session run of ``kind`` (flows.generate) with engine start-up forbidden: zero
    units generated, every unit reused, the same rows, and data, rejected and raw shards byte-identical."""
    from pipeline.shards.writer import sha256_file

    cfg, s = run
    root = cfg.output.dir
    before = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.glob("*/*.arrow"))}

    def no_engine(*a, **k):
        raise AssertionError("a finished run must not start an engine")

    import flows.generate

    monkeypatch.setattr(flows.generate, "EnginePool", no_engine)
    again = flows.generate.generate_flow(kind, cfg.model_dump(mode="json"))
    assert (again["generated"], again["reused"], again["kept"]) == (0, s["units"], s["kept"])
    assert {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.glob("*/*.arrow"))} == before
    return again


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pipeline.config import RayConfig
    from pipeline.engines.pool import ensure_ray

    ensure_ray(RayConfig())
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_session():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def session_prefect_env(**extra: str) -> dict:
    """The environment for a child run that reports to the session's Prefect server (``prefect_session`` must be
    up): it starts no temporary server of its own, as a user's runs against `prefect server start` do not (a run
    with the temporary server is what test_readme and the Ctrl-C tests run)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "session_prefect_env needs the prefect_session fixture"
    return {**os.environ, "PREFECT_API_URL": url, **extra}


@pytest.fixture(scope="session")
def embedded_engine():
    from pipeline.config import EngineConfig
    from pipeline.engines.embedded import EmbeddedEngine

    return EmbeddedEngine(EngineConfig(batch_size=8))


@pytest.fixture(scope="session")
def negatives_run(tmp_path_factory, ray_session, prefect_session):
    """One real generation (10 COCO captions + 1 bad row, SmolLM2 through Ray and Prefect) per session;
    its dataset also feeds the trainer's integration tests. Returns (RunConfig, summary)."""
    from flows.generate import generate_flow
    from pipeline.config import load_config

    root = tmp_path_factory.mktemp("flow")
    inp = write_jsonl(root / "in.jsonl", coco_captions(10) + [{"id": "bad", "caption": " "}])
    cfg = load_config(None, {"input": {"path": inp}, "output": {"dir": root / "ds", "units_per_part": 32}})
    return cfg, generate_flow("negatives", cfg.model_dump(mode="json"))


def reasoning_questions() -> list[dict]:
    """Three of the bundled easy questions (SmolLM2-135M gets some right, so rows exist), then real ones from
    ../shared: SVAMP, GSM8K (train split, the seed set; no id column) and CommonsenseQA (choices in the
    Hugging Face layout), in the input layouts a user would pass."""
    import json as _json

    easy = [_json.loads(line) for line in (REPO / "data" / "questions.jsonl").open().readlines()]
    svamp = _json.loads((SHARED / "svamp" / "SVAMP.json").read_text())[:1]
    rows = [easy[0], easy[1], easy[5]]
    rows += [{"id": r["ID"], "question": f"{r['Body']} {r['Question']}", "answer": r["Answer"]} for r in svamp]
    rows += [_json.loads(line) for line in (SHARED / "gsm8k" / "train.jsonl").open().readlines()[:1]]  # no id column
    cq = _json.loads((SHARED / "commonsenseqa" / "dev_rand_split.jsonl").open().readline())
    rows.append({"id": cq["id"], "question": cq["question"], "choices": cq["choices"], "answer": cq["answerKey"]})
    return rows


@pytest.fixture(scope="session")
def rationales_run(tmp_path_factory, ray_session, prefect_session):
    """One real rationales generation (6 questions + 1 bad row, k=3 + 2 adversarial, SmolLM2 through Ray
    and Prefect). Returns (RunConfig, summary)."""
    from flows.generate import generate_flow
    from pipeline.config import load_config

    root = tmp_path_factory.mktemp("rationales")
    inp = write_jsonl(root / "in.jsonl", reasoning_questions() + [{"id": "bad", "question": "   "}])
    cfg = load_config(
        None,
        {
            "input": {"path": inp},
            "output": {"dir": root / "ds", "units_per_part": 4},
            "rationales": {"k": 3, "max_tokens": 100, "adversarial": {"n": 2}},
        },
    )
    return cfg, generate_flow("rationales", cfg.model_dump(mode="json"))


def snli_premises(n: int) -> list[dict]:
    """The first ``n`` distinct SNLI dev premises from ../shared (Flickr30k captions), without ids."""
    seen: list[str] = []
    for line in (SHARED / "snli" / "dev.jsonl").open():
        premise = json.loads(line)["premise"]
        if premise not in seen:
            seen.append(premise)
        if len(seen) == n:
            break
    return [{"sentence": p} for p in seen]


@pytest.fixture(scope="session")
def pairs_run(tmp_path_factory, ray_session, prefect_session):
    """One real sentence-pairs generation (4 SNLI premises + 1 bad row: candidates, then the judge, SmolLM2 through
    Ray and Prefect). Returns (RunConfig, summary)."""
    from flows.generate import generate_flow
    from pipeline.config import load_config

    root = tmp_path_factory.mktemp("pairs")
    inp = write_jsonl(root / "in.jsonl", snli_premises(4) + [{"sentence": 42}])
    cfg = load_config(None, {"input": {"path": inp}, "output": {"dir": root / "ds", "units_per_part": 8}})
    return cfg, generate_flow("pairs", cfg.model_dump(mode="json"))


@pytest.fixture(scope="session")
def text_scorers(tmp_path_factory):
    """The filter stage's real scorers (MiniLM embeddings, SmolLM2 log-likelihood), cached in a temp folder."""
    from pipeline.config import FilterConfig, bundled_gguf
    from pipeline.filters.scorers import TextScorers

    return TextScorers(FilterConfig(), bundled_gguf(), cache_root=tmp_path_factory.mktemp("scores"))


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory):
    """(base_url, model) of an OpenAI-compatible server: $CONTRASTGEN_TEST_OPENAI_BASE_URL (and
    $CONTRASTGEN_TEST_OPENAI_MODEL) when set, else a real `contrastgen serve` started here on 127.0.0.1."""
    import sys

    if os.environ.get("CONTRASTGEN_TEST_OPENAI_BASE_URL"):
        yield os.environ["CONTRASTGEN_TEST_OPENAI_BASE_URL"], os.environ.get("CONTRASTGEN_TEST_OPENAI_MODEL")
        return
    cli = str(Path(sys.executable).parent / "contrastgen")
    env = {**os.environ, "CONTRASTGEN_API_KEY": os.environ["OPENAI_API_KEY"]}
    proc, url = start_server(
        lambda port: [cli, "serve", "--port", str(port)], tmp_path_factory.mktemp("serve") / "serve.log", env
    )
    yield url, None
    proc.terminate()
    proc.wait(30)


def start_server(
    argv_for_port, log: Path, env: dict | None = None, timeout_s: float = 400, root: str = "/v1", probe: str = "/models"
):
    """Start an OpenAI-compatible server on a free 127.0.0.1 port (``argv_for_port(port)``), logging to a file (a
    full pipe would block it), and wait until ``root + probe`` (/v1/models) answers (a 401 of a keyed server is an
    answer). Returns (process, base URL = http://127.0.0.1:PORT + root)."""
    import socket
    import subprocess
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(argv_for_port(port), stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url, deadline = f"http://127.0.0.1:{port}{root}", time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + probe, timeout=2)
            return proc, url
        except urllib.error.HTTPError as e:
            assert e.code == 401, f"{url}{probe} answered HTTP {e.code}"
            return proc, url
        except OSError:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.time() < deadline, f"{argv_for_port(port)[:3]} did not answer in {timeout_s:g} s"
            time.sleep(0.5)


# tests/vllm needs the vllm package, which lives in its own environment (`make venv-vllm`; `make test` runs the
# set there with .venv-vllm/bin/python). In an environment without vllm it is not collected.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]


def stop_after_parts(
    cmd: list[str], out: Path, sig: int, group: bool, parts: int = 1, log: Path | None = None, env: dict | None = None
) -> tuple[int, str, float]:
    """Start the console script ``cmd`` (a run into ``out``), send ``sig`` once ``parts`` more raw parts exist: to its
    process group as a terminal's Ctrl-C does (``group``), or to its pid alone as a scheduler does. Returns (exit
    code, stderr, seconds from the signal to the exit); asserts that no process of the run is left."""
    import signal as _signal
    import subprocess
    import time

    import psutil

    before = len(list((out / "raw").glob("part-*.arrow")))
    err = log or out.parent / f"{out.name}.{_signal.Signals(sig).name}.err"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, env=env, start_new_session=True)
        deadline = time.time() + 400
        while len(list((out / "raw").glob("part-*.arrow"))) < before + parts:
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.time() < deadline, "no new raw part appeared in time"
            time.sleep(0.1)
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        t0 = time.monotonic()
        (os.killpg if group else os.kill)(proc.pid, sig)
        rc = proc.wait(timeout=60)
        seconds = time.monotonic() - t0
    time.sleep(0.5)  # the supervisor's sweep of the worker's process group has returned: nothing may be left

    def alive(pid: int) -> list[str] | None:
        try:
            p = psutil.Process(pid)
            return None if p.status() == psutil.STATUS_ZOMBIE else p.cmdline()[:3]
        except psutil.NoSuchProcess:
            return None

    left = [c for c in map(alive, family) if c is not None]
    assert not left, f"processes of the stopped run are left: {left}"
    return rc, err.read_text(), seconds


def raw_keys(root: Path) -> list[str]:
    """Unit keys of every raw part of the run store ``root``, in part order (one per generated unit)."""
    import pyarrow as pa

    keys = []
    for part in sorted((root / "raw").glob("part-*.arrow")):
        with pa.memory_map(str(part)) as src:
            keys += pa.ipc.open_stream(src).read_all().column("unit_key").to_pylist()
    return keys


# Ray's C++ core writes its own log lines to the driver's stderr, past Python's logging: in Ray 2.60 an "E ...
# core_worker.cc" line whenever Ray Data starts an actor pool (its map function's arguments are in the object store
# and the actors may restart). Not the stop's doing, and not ours to silence without hiding Ray's real errors.
RAY_CORE_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\] \w+\.cc:\d+: ")


def stderr_lines(err: str) -> list[str]:
    """What a run said on stderr, less its progress lines and Ray's C++ log lines."""
    return [
        ln
        for ln in err.splitlines()
        if ln.strip() and not ln.startswith("generate negatives:") and not RAY_CORE_LINE.match(ln)
    ]
