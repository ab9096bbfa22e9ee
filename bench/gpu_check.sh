#!/usr/bin/env bash
# The vllm engine on a CUDA GPU: the whole pipeline against bare LLM.chat on the same prompts (goal >= 0.95x).
#
#   bash bench/gpu_check.sh MODEL_DIR [CAPTIONS] [TP]
#
# MODEL_DIR: a Hugging Face model folder on local disk (the machine may have no network). PY: a Python with
# vllm (GPU build) and contrastgen installed (default: python3), e.g. `pip install 'contrastgen[vllm]'`.
# Prints nvidia-smi, then bench/vllm_engine.py's lines; the last line is one JSON object (bare_tok_s,
# pipeline_tok_s, ratio). Record the figure in docs/scale.md ("Measured on a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bash bench/gpu_check.sh MODEL_DIR [CAPTIONS] [TP]}
CAPTIONS=${2:-200}
TP=${3:-1}
PY=${PY:-python3}
test -f "$MODEL/config.json" || { echo "gpu_check: expected a transformers model folder with config.json at $MODEL" >&2; exit 2; }
nvidia-smi -L || { echo "gpu_check: expected a CUDA GPU (nvidia-smi), found none" >&2; exit 2; }
"$PY" -c "import vllm, pipeline; print('vllm', vllm.__version__)"
export HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
exec "$PY" bench/vllm_engine.py --device cuda --model "$MODEL" --captions "$CAPTIONS" --tp "$TP" --no-embedded --json
