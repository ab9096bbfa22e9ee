"""`contrastgen deploy` against a real `prefect server` started here: the deployment and its schedule are
registered, runs triggered by hand execute, the card links each flow run, and a rerun after the input grew
appends new shards without rewriting the old ones; a run cancelled through the Prefect API stops in seconds, leaves
no Ray process behind, and the next run resumes it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.shards.writer import sha256_file
from tests.conftest import coco_captions, write_jsonl
from tests.conftest import raw_keys as _raw_keys

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(proc: subprocess.Popen, check, what: str, timeout: float = 180):
    deadline = time.time() + timeout
    while True:
        try:
            out = check()
            if out:
                return out
        except Exception:  # noqa: BLE001 - not up yet
            pass
        assert proc.poll() is None, f"{what}: the process exited ({proc.returncode})"
        assert time.time() < deadline, f"{what}: not ready after {timeout} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on 127.0.0.1, shared by this module's tests (their deployments have their own
    names)."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    _wait(proc, lambda: urllib.request.urlopen(url + "/health", timeout=2).status == 200, "prefect server")
    yield url
    proc.terminate()
    proc.wait(60)


def test_deploy_refuses_without_a_prefect_api(tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "n",
                        "kind": "negatives",
                        "cron": "0 2 * * *",
                        "run": {
                            "input": {"path": str(write_jsonl(tmp_path / "in.jsonl", coco_captions(1)))},
                            "output": {"dir": str(tmp_path / "o")},
                        },
                    }
                ]
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")} | {
        "PREFECT_HOME": str(tmp_path / "ph")
    }
    out = subprocess.run([str(BIN / "contrastgen"), "deploy", str(run_file)], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "no Prefect API is configured" in out.stderr and "prefect server start" in out.stderr


def test_deployment_schedule_manual_runs_and_incremental_append(prefect_server, ray_session, tmp_path):
    """Both flow runs join the session's Ray (``ray.address``), as a deployment on a cluster does, and find the
    engine replicas loaded there; the cancel test below runs a local Ray of its own, whose processes it counts."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(2, offset=40))
    out = tmp_path / "ds"
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "yearly",
                        "kind": "negatives",
                        "cron": "0 0 1 1 *",
                        "run": {
                            "input": {"path": str(inp)},
                            "output": {"dir": str(out)},
                            "ray": {"address": ray_session.get_runtime_context().gcs_address},
                            "negatives": {"types": ["swap_att", "replace_obj"], "paraphrase": False},
                        },
                    }
                ]
            }
        )
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path / "ph")}
    log = open(tmp_path / "deploy.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "contrastgen"), "deploy", str(run_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}):

            async def read():
                async with get_client() as client:
                    return await client.read_deployment_by_name("contrastgen-generate/yearly")

            import asyncio

            dep = _wait(proc, lambda: asyncio.run(read()), "deployment registered")
            assert [s.schedule.cron for s in dep.schedules] == ["0 0 1 1 *"]
            assert dep.parameters["config"]["output"]["dir"] == str(out)

            first = run_deployment("contrastgen-generate/yearly", timeout=600)
            assert first.state.is_completed(), (tmp_path / "deploy.log").read_text()[-3000:]
            manifest = json.loads((out / "manifest.json").read_text())
            assert manifest["run_id"] == str(first.id) and str(first.id) in (out / "README.md").read_text()
            old = {p: sha256_file(p) for p in (out / "data").glob("*.arrow")}
            first_added = manifest["publish"]["releases"][0]["added"]

            write_jsonl(inp, coco_captions(3, offset=40))  # the input grew by one caption
            second = run_deployment("contrastgen-generate/yearly", timeout=600)
            assert second.state.is_completed()
    finally:
        proc.terminate()
        proc.wait(60)
    manifest = json.loads((out / "manifest.json").read_text())
    releases = manifest["publish"]["releases"]
    assert [r["mode"] for r in releases] == ["whole", "append"] and releases[1]["run_id"] == str(second.id)
    assert {p: sha256_file(p) for p in old} == old  # published shards never rewritten
    new = [s for s in manifest["shards"] if "-r001-" in s["path"]]
    assert new and all((out / s["path"]).is_file() for s in new)
    assert sum(s["rows"] for s in manifest["shards"] if s["split"] != "rejected") == manifest["counts"]["kept"]
    assert manifest["counts"]["reused"] == 2 * 2  # the first captions' units were not generated again
    assert (
        releases[1]["added"]["train"] + releases[1]["added"]["test"] + first_added["train"] + first_added["test"]
        == manifest["counts"]["kept"]
    )
    shown = subprocess.run(
        [str(BIN / "contrastgen"), "inspect", str(out), "--json"], capture_output=True, text=True, check=True
    )
    assert [r["run_id"] for r in json.loads(shown.stdout)["releases"]] == [str(first.id), str(second.id)]
    card = (out / "README.md").read_text()
    assert str(first.id) in card and str(second.id) in card


def _ray_processes(root: int) -> set[tuple[int, float]]:
    """(pid, start time) of every Ray process below ``root``: its raylet, GCS and workers (other Ray instances on the
    machine are not below it)."""
    found = set()
    for p in psutil.Process(root).children(recursive=True):
        try:
            cmd = p.cmdline()
            if (
                p.name() in ("raylet", "gcs_server")
                or (cmd and cmd[0].startswith("ray::"))
                or any("/ray/" in c for c in cmd)
            ):
                found.add((p.pid, p.create_time()))
        except psutil.NoSuchProcess:
            pass
    return found


def _alive(procs: set[tuple[int, float]]) -> list[int]:
    """Those of ``procs`` still running (a pid reused by a new process does not count)."""
    left = []
    for pid, started in procs:
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


def test_cancelled_deployment_run_stops_within_30_s_and_the_next_run_resumes(prefect_server, tmp_path):
    """Prefect's runner answers a cancel with SIGTERM to the run's process (then SIGKILL 30 s later): the flow stops
    at once (pipeline.stop), ends Cancelled with its one line, its Ray goes with it, and its parts are kept."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import State

    from pipeline.config import RunConfig
    from pipeline.inputs import read_captions
    from pipeline.kinds import negatives as task

    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(8, offset=60))
    out = tmp_path / "ds"
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "by-hand",
                        "kind": "negatives",
                        "run": {
                            "input": {"path": str(inp)},
                            "output": {"dir": str(out), "units_per_part": 4},
                            "negatives": {"types": ["swap_obj", "replace_obj", "add_att"]},
                        },
                    }
                ]
            }
        )
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path / "ph")}
    log_path = tmp_path / "deploy.log"
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(BIN / "contrastgen"), "deploy", str(run_file)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    log = lambda: log_path.read_text()[-4000:]  # noqa: E731
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
            dep = _wait(
                proc, lambda: client.read_deployment_by_name("contrastgen-generate/by-hand"), "deployment registered"
            )
            cfg = RunConfig.model_validate(dep.parameters["config"])
            planned = {u.key for u in task.plan_units(read_captions(cfg.input)[0], cfg, task.templates_for(cfg))}
            assert len(planned) == 8 * 4  # three types and a paraphrase per caption: 8 parts, 2 in flight

            first = run_deployment("contrastgen-generate/by-hand", timeout=0)
            _wait(proc, lambda: list((out / "raw").glob("part-*.arrow")), "a first raw part", timeout=300)
            ray_procs = _ray_processes(proc.pid)
            assert ray_procs, f"expected the run's local Ray below the deploy process\n{log()}"
            cancelled_at = time.time()
            result = client.set_flow_run_state(
                first.id, State(type=StateType.CANCELLING)
            )  # as `prefect flow-run cancel`
            assert result.status.value == "ACCEPT", result

            while not (state := client.read_flow_run(first.id).state).is_cancelled():
                assert time.time() < cancelled_at + 30, (
                    f"{state.type} 30 s after the cancel, expected CANCELLED\n{log()}"
                )
                time.sleep(0.5)
            # the flow stopped itself (pipeline.stop), never crashed: its one line is in the run's history
            history = [(s.type, s.message) for s in client.read_flow_run_states(first.id)]
            assert StateType.CRASHED not in {t for t, _ in history}, (history, log())
            assert any(
                t == StateType.CANCELLED and m and m.startswith("stopped by SIGTERM after ") for t, m in history
            ), (history, log())
            left = lambda: _alive(ray_procs) + [pid for pid, _ in _ray_processes(proc.pid)]  # noqa: E731
            while left() and time.time() < cancelled_at + 30:
                time.sleep(0.5)
            assert not left(), f"Ray processes of the cancelled run left 30 s after the cancel: {left()}\n{log()}"

            before = {p.name: p.read_bytes() for p in (out / "raw").glob("part-*.arrow")}
            kept = len(_raw_keys(out))
            assert 0 < kept < len(planned), f"the cancel came after the run finished ({kept} units)"
            assert not (out / "manifest.json").exists()

            second = run_deployment("contrastgen-generate/by-hand", timeout=600)
            assert second.state.is_completed(), f"{second.state}\n{log()}"
    finally:
        proc.terminate()
        proc.wait(60)
        log_file.close()
    keys = _raw_keys(out)
    assert len(keys) == len(set(keys)) and set(keys) == planned  # every planned unit exactly once
    for name, data in before.items():  # the cancelled run's parts reused as they were
        assert (out / "raw" / name).read_bytes() == data
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == str(second.id)
    assert manifest["counts"]["reused"] == kept and manifest["counts"]["generated"] == len(planned) - kept
