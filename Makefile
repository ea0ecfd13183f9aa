# Quickstart: `make demo` and `make test` set up .venv on a fresh machine and need nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-slow bench clean
# Headless Chromium for the viewer's browser tests: Debian's package (playwright's own browser downloads are never used).
CHROMIUM := /usr/bin/chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,render]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/orbit4d video-to-3d examples/sacre_coeur --out outputs/demo --downscale 4 --steps 800 --overwrite
	@echo "Posed capture in outputs/demo/capture; splats in outputs/demo/scene (splats.ply for SuperSplat / Blender, turntable.mp4, renders/ with depth, training.png)"

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/capture_bench.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
