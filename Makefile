# The README's commands. Each bootstraps .venv (and the data it needs) on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast pretrain data data-large venv bazel-test clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

data: $(STAMP)
	$(PY) -m training.data fetch

# The ~91 MB corpus of docs/data.md (not needed by test or pretrain).
data-large: $(STAMP)
	$(PY) -m training.data fetch --corpus=large

test: $(STAMP) data
	$(PY) -m pytest -q tests

test-fast: $(STAMP) data
	$(PY) -m pytest -q -m "not slow" tests

pretrain: $(STAMP) data
	$(PY) -m training.pretrain
	@echo "Outputs: checkpoints and TensorBoard logs in runs/pretrain, SavedModel in saved_models/groupbert-mini/1"

clean:
	rm -rf $(VENV) data runs saved_models/*/

# Bazel 4 (Debian's bazel-bootstrap, installed here if missing), fully offline: see WORKSPACE,
# .bazelrc and tools/bazel/. `make bazel-test BAZEL_TARGETS=//tests/...` runs every test file.
BAZEL ?= bazel
BAZEL_TARGETS ?= //tests:test_config
BAZEL_FLAGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

bazel-test: $(STAMP) data
	@command -v $(BAZEL) >/dev/null 2>&1 || { \
	  echo "Installing Debian's bazel-bootstrap (Bazel 4)..."; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bazel-bootstrap; }
	@# Always stop the server afterwards, pass or fail, so no JVM lingers.
	status=0; $(BAZEL) test $(BAZEL_FLAGS) $(BAZEL_TARGETS) || status=$$?; \
	  $(BAZEL) shutdown; exit $$status
