# The two commands a newcomer needs:  make demo  (set up + main job)  and  make test.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
# Ray, MLflow and Optuna phone home by default; nothing here should.
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: install demo test lint smoke bench clean

# constraints.txt pins every package (shared with the images in docker/), so CI and a new
# machine install what the tests ran against.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Main job on the embedded defaults: the quick-start study (4 variants on the built-in synthetic
# faces) through a local Ray (127.0.0.1) and Tune, tracked in MLflow (sqlite under
# ./occstudy-runs/quickstart); prints the ablation table. Minutes on 2 CPU cores (see README).
demo: install
	$(VENV)/bin/occstudy run studies/quickstart.py

lint: install
	$(VENV)/bin/ruff check occstudy tests bench studies
	$(VENV)/bin/ruff format --check occstudy tests bench studies
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q

smoke: install
	$(VENV)/bin/occstudy train --smoke
	$(VENV)/bin/occstudy run studies/quickstart.py --smoke

bench: install
	$(PY) bench/bench_steps.py
	$(PY) bench/bench_study.py

clean:
	rm -rf runs occstudy-runs .pytest_cache .mypy_cache .ruff_cache
