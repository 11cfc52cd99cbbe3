# The two commands of the README: `make run` (start the whole exchange) and
# `make test` (run the whole suite). Both set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test stop setup asan clean

run: setup
	scripts/run.sh

test: setup
	scripts/browser.sh
	scripts/test.sh

stop:
	scripts/services.sh stop

setup: $(STAMP) build

# Reinstall when the pinned requirements or the build description change.
$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

# Rebuild the C extension in place (fast, and a no-op when nothing changed).
.PHONY: build
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

asan: setup
	scripts/asan_matcher.sh

clean:
	rm -rf build *.egg-info matching_native/*.so
