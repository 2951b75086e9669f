# `make test` and `make demo` build .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned for the dev setup (they install from local disk here).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m finesam.cli.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_predictor.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
