# Quickstart: `make demo` and `make test` set up .venv on a fresh machine and need nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,render]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/orbit4d capture examples/sacre_coeur --out outputs/demo/capture --overwrite
	@echo "Posed capture written to outputs/demo/capture (transforms.json, images/, sparse/0/, points3D.ply, report.json)"

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/capture_bench.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
