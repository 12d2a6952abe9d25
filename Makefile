# Two commands are the whole set-up on a fresh clone: `make sweep` and `make test`.
# Each creates .venv and installs the package (editable, with dev tools) on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs

.PHONY: sweep test test-fast lint format bench bench-search bench-prefix bench-mlflow clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

sweep: $(STAMP)
	$(BIN)/supcon-sweep data synth --out $(OUT)/data --size tiny
	$(BIN)/supcon-sweep data check --kind asvspoof2019 --root $(OUT)/data/LA
	$(BIN)/supcon-sweep sweep --space search_spaces/default.yaml --num-samples 4 \
		--max-concurrent 1 --workers-per-trial 2 --out $(OUT)

# Everything CI runs: the Ray tier and the Ray-free tier side by side (tests/run_tiers.py),
# then the 25 slowest tests of both.
test: $(STAMP)
	$(BIN)/python -m tests.run_tiers

# The tests that need no Ray, no cluster, no multi-process DDP and no slow subprocess trial
# (the kill-and-resume test): under 2 minutes on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not ray and not cluster and not dist and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/data_pipeline.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/front_door.py
	$(BIN)/python bench/bootstrap.py

# The 24-trial grid against TPE + ASHA on the local task: 15 minutes on 2 cores.
bench-search: $(STAMP)
	$(BIN)/python bench/search_efficiency.py

# The same 6-trial grid with and without shared prefixes: 12 minutes on 2 cores.
bench-prefix: $(STAMP)
	$(BIN)/python bench/shared_prefix.py

# The team MLflow server (PostgreSQL + basic-auth) against the old SQLite one under 8/32/64
# trial-shaped writers: 15 minutes on 2 cores.
bench-mlflow: $(STAMP)
	$(BIN)/python bench/mlflow_load.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache *.egg-info
