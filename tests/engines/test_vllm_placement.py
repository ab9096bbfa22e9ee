"""vLLM replicas on a multi-node GPU layout, with real Ray placement: `ray.cluster_utils.Cluster` starts three
nodes here, each declaring 3 GPUs (Ray schedules by declared resources; no CUDA is touched). At TP=2 the
layout holds 3 replicas, each STRICT_PACK group lands on one node, and a 4th fails in time with the layout.
At TP=1 on a cluster where Ray does not set CUDA_VISIBLE_DEVICES, each replica sets its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import json, ray
    from ray.cluster_utils import Cluster
    from pipeline.engines.config import VLLMEngineConfig
    from pipeline.engines.vllm_engine import alive_node_gpus, replica_count, replica_options
    from pipeline.errors import ConfigError

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 3})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=3)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    cluster.wait_for_nodes()
    v = VLLMEngineConfig(model="m", tensor_parallel_size=2, placement_timeout_s=5)
    layout = sorted(alive_node_gpus())
    n = replica_count(v, layout)
    groups = [replica_options(v)["scheduling_strategy"].placement_group for _ in range(n)]
    table = ray.util.placement_group_table()
    nodes = [sorted(set(table[g.id.hex()]["bundles_to_node_id"].values())) for g in groups]
    try:
        replica_options(v)
        fourth = "placed"
    except ConfigError as exc:
        fourth = str(exc)
    print(json.dumps({"layout": layout, "replicas": n, "nodes_per_group": [len(x) for x in nodes],
                      "distinct_nodes": len({x[0] for x in nodes}), "fourth": fourth}))
    ray.shutdown()
    cluster.shutdown()
""")


def test_replicas_follow_the_nodes_gpu_layout_with_real_placement(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["layout"] == [3.0, 3.0, 3.0] and out["replicas"] == 3  # not 9 // 2 = 4
    assert out["nodes_per_group"] == [1, 1, 1] and out["distinct_nodes"] == 3  # each group on one node
    assert "expected a node with 2 free GPUs" in out["fourth"] and "[3.0, 3.0, 3.0]" in out["fourth"]


class EnvEngine:
    """A plugin engine (engine.plugin) that answers every request with the CUDA_VISIBLE_DEVICES its replica had
    when the engine was built, where vLLM would read it."""

    name = "env"

    def __init__(self, cfg):
        self.model_id, self.devices = "env", os.environ.get("CUDA_VISIBLE_DEVICES")

    def warmup(self) -> None:
        pass

    def generate(self, requests):
        from pipeline.records import Completion

        return [Completion(q.key, (str(self.devices),), 0, 1, 0.0, ("stop",)) for q in requests]


NOSET_SCRIPT = textwrap.dedent("""
    import json, os, ray
    from pipeline.engines.config import EngineConfig
    from pipeline.engines.pool import EngineActor
    from pipeline.records import GenerationRequest, Sampling

    @ray.remote(num_gpus=1, num_cpus=0)
    def ray_sets():
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    before = ray.get(ray_sets.remote())  # while the GPUs are free
    cfg = EngineConfig(kind="plugin", plugin="tests.engines.test_vllm_placement:EnvEngine").model_dump_json()
    replicas = [EngineActor.options(num_gpus=1, num_cpus=0).remote(cfg, 1, i) for i in range(2)]
    ask = [GenerationRequest("k", (("user", "x"),), Sampling(0.0, 1.0, 1, 1, 0))]
    seen = [ray.get(r.generate.remote(ask))[0].texts[0] for r in replicas]
    print(json.dumps({"ray_sets": before, "replicas": seen}))
    ray.shutdown()
""")


def test_tp1_replicas_get_their_own_gpu_where_ray_does_not_set_it(tmp_path):
    """Real Ray, 2 declared GPUs (no CUDA touched), two one-GPU replicas (pool.EngineActor) at once, and
    RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1: Ray leaves CUDA_VISIBLE_DEVICES unset in its workers (both
    replicas would take GPU 0); each replica sets it from ray.get_gpu_ids() before its engine is built."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[2]), RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES="1")
    res = subprocess.run(
        [sys.executable, "-c", NOSET_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert seen["ray_sets"] is None  # NOSET: Ray set nothing
    assert sorted(seen["replicas"]) == ["0", "1"]  # one GPU each, not GPU 0 twice
