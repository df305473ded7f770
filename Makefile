# The README's commands. Each bootstraps .venv (and the data it needs) on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast pretrain data venv bazel-test clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

data: $(STAMP)
	$(PY) -m training.data fetch

test: $(STAMP) data
	$(PY) -m pytest -q tests

test-fast: $(STAMP) data
	$(PY) -m pytest -q -m "not slow" tests

pretrain: $(STAMP) data
	$(PY) -m training.pretrain
	@echo "Outputs: checkpoints and TensorBoard logs in runs/pretrain, SavedModel in saved_models/groupbert-mini/1"

clean:
	rm -rf $(VENV) data runs saved_models/*/
