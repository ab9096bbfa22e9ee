"""Engine throughput: the embedded engine in-process vs the same model behind `contrastgen serve` + the
openai engine (the HTTP path's overhead; goal >= 0.9x), and optionally on a GPU.

    python bench/http_engine.py [--captions 12] [--rounds 2] [--device cuda]

Both sides get the negatives flow's own parts of requests (same prompts, seeds and chunking; the demo's
captions, as bench/engines.py, which compares the CPU engines themselves), one part
at a time, and the same untimed warm round first (prefix caches built, allocator warm). Each side runs
in its own process, one after the other, so neither competes with the other for the 2 cores: the
in-process engine in a child process, then a real `contrastgen serve` subprocess on 127.0.0.1 driven by
the openai engine from this process (which loads no model). Both sides must produce the same tokens.
--device cuda adds the in-process embedded engine on CUDA and prints its ratio to the CPU run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from engines import parts_of  # noqa: E402

from pipeline.config import load_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "contrastgen"), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("contrastgen serve did not come up in 180 s")


def timed(engine, parts, rounds: int) -> dict:
    """One untimed warm round, then ``rounds`` timed ones: total tokens and seconds."""
    [engine.generate(p) for p in parts]
    tokens, seconds = 0, 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        tokens += sum(c.tokens_out for part in parts for c in engine.generate(part))
        seconds += time.perf_counter() - t0
    return {"tokens": tokens, "seconds": seconds, "rate": tokens / seconds}


def config(a, tmp: Path, port: int):
    """(the run config with the openai engine at ``port``, the parts of the demo's first a.captions captions)."""
    parts, _, cfg = parts_of(a.captions, tmp)
    return cfg.model_copy(
        update={
            "engine": load_config(
                None, {"engine": {"kind": "openai", "openai": {"base_url": f"http://127.0.0.1:{port}/v1"}}}
            ).engine
        }
    ), parts


def in_process(a) -> None:
    """Child mode: the embedded engine in this process; prints one JSON line."""
    from pipeline.engines.embedded import EmbeddedEngine

    cfg, parts = config(a, Path(tempfile.mkdtemp()), 0)
    engine = EmbeddedEngine(cfg.engine.model_copy(update={"kind": "embedded", "device": a.device or "cpu"}))
    engine.warmup()
    print(json.dumps(timed(engine, parts, a.rounds)))


def child(a, device: str | None) -> dict:
    cmd = [sys.executable, __file__, "--in-process", "--captions", str(a.captions), "--rounds", str(a.rounds)]
    out = subprocess.run(cmd + (["--device", device] if device else []), check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", help="also time the embedded engine on this device (cuda)")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.in_process:
        return in_process(a)
    from pipeline.engines.openai_compat import OpenAIEngine

    port = free_port()
    cfg, parts = config(a, Path(tempfile.mkdtemp()), port)
    print(
        f"{sum(map(len, parts))} requests in {len(parts)} parts, {os.cpu_count()} cores, {a.rounds} timed rounds each"
    )
    base = child(a, None)
    print(f"embedded in-process: {base['tokens']} tokens in {base['seconds']:.1f} s = {base['rate']:.1f} tok/s")
    server = start_server(port)
    try:
        engine = OpenAIEngine(cfg.engine)
        engine.warmup()
        http = timed(engine, parts, a.rounds)
    finally:
        server.terminate()
        server.wait(30)
    print(f"serve + openai engine: {http['tokens']} tokens in {http['seconds']:.1f} s = {http['rate']:.1f} tok/s")
    same = "same tokens" if http["tokens"] == base["tokens"] else "DIFFERENT token counts"
    print(f"ratio {http['rate'] / base['rate']:.2f}x (goal >= 0.90x); {same}")
    if a.device:
        gpu = child(a, a.device)
        print(f"embedded on {a.device}: {gpu['rate']:.1f} tok/s = {gpu['rate'] / base['rate']:.1f}x the CPU run")


if __name__ == "__main__":
    main()
