# `make test` and `make demo` build .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

RUNTIME_VENV := .venv-runtime
RUNTIME_PY := $(RUNTIME_VENV)/bin/python
RUNTIME_STAMP := $(RUNTIME_VENV)/.torch-installed
RUNTIME_SRC := $(RUNTIME_VENV)/source

# Label Studio for the ML backend's end-to-end test (tests/label_studio/): its own venv (it pins
# Django and friends), and a migrated database made once (creating one takes minutes; a copy opens
# in seconds). Where it cannot be installed, those tests skip and say why.
LS_VENV := .venv-ls
LS_VERSION := 1.23.2
LS_STAMP := $(LS_VENV)/.label-studio-$(LS_VERSION)
LS_DATABASE := $(LS_VENV)/database-template/.finesam-ready

ANYLABELING_VENV := .venv-anylabeling
ANYLABELING_STAMP := $(ANYLABELING_VENV)/.installed
X_ANYLABELING_VENV := .venv-xanylabeling
X_ANYLABELING_STAMP := $(X_ANYLABELING_VENV)/.installed

.PHONY: test test-setup demo venv bench clean check-runtime chromium c-compiler ls-venv anylabeling-venvs tool-venvs

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned for the dev setup (they install from local disk here).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian's chromium for the web tool's browser test (tests/server/test_browser.py), installed when
# missing; where it cannot be, that test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	} || echo "WARNING: could not install Debian's chromium: the browser test will skip"

# A C compiler for tools/avx2_only.c (the int8 test on onnxruntime's AVX2 kernels builds it),
# installed when missing; where it cannot be, that test skips and says why.
c-compiler:
	@command -v cc >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev; \
	} || echo "WARNING: could not install a C compiler: the AVX2 int8 test will skip"

ls-venv: $(LS_DATABASE)

$(LS_STAMP):
	rm -rf $(LS_VENV)
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q label-studio==$(LS_VERSION) 2>&1 | grep -v "^WARNING: Location" || true
	@# the stamp marks a complete install (a venv cannot be moved: its scripts name its path)
	@if $(LS_VENV)/bin/python -c "import label_studio, label_studio_sdk" 2>/dev/null; then touch $(LS_STAMP); \
	else rm -rf $(LS_VENV); echo "WARNING: could not install label-studio==$(LS_VERSION): the Label Studio tests will skip"; fi

$(LS_DATABASE): $(LS_STAMP)
	@if [ -d $(LS_VENV) ]; then $(PYTHON) tests/label_studio/ls_server.py prepare --venv $(LS_VENV) \
	  || echo "WARNING: could not prepare Label Studio's database: the end-to-end test will make its own (minutes)"; fi

# AnyLabeling 0.4.43 and X-AnyLabeling 4.2.1 (both install a package named anylabeling; PyQt6, opencv,
# onnxruntime) in venvs of their own: tests/onnx/test_anylabeling.py runs their own SegmentAnythingONNX
# classes there through a subprocess (headless). Without them the AnyLabeling test skips, saying why,
# and the X-AnyLabeling one replays that class's pre- and post-processing.
anylabeling-venvs: $(ANYLABELING_STAMP) $(X_ANYLABELING_STAMP)

$(ANYLABELING_STAMP):
	rm -rf $(ANYLABELING_VENV)
	$(PYTHON) -m venv $(ANYLABELING_VENV) && $(ANYLABELING_VENV)/bin/python -m pip install -q anylabeling==0.4.43 \
	  && touch $(ANYLABELING_STAMP) \
	  || { rm -rf $(ANYLABELING_VENV); echo "WARNING: could not install anylabeling==0.4.43: its test will skip"; }

$(X_ANYLABELING_STAMP):
	rm -rf $(X_ANYLABELING_VENV)
	$(PYTHON) -m venv $(X_ANYLABELING_VENV) \
	  && $(X_ANYLABELING_VENV)/bin/python -m pip install -q 'x-anylabeling-cvhub[cpu]==4.2.1' \
	  && touch $(X_ANYLABELING_STAMP) \
	  || { rm -rf $(X_ANYLABELING_VENV); echo "WARNING: could not install x-anylabeling-cvhub: its test replays its code"; }

# The annotation tools' venvs install side by side (each is mostly downloads and unpacking).
tool-venvs:
	@$(MAKE) --no-print-directory -j3 ls-venv anylabeling-venvs

# Everything the tests need, installed side by side: pip spends most of its time waiting on the
# package index and the disk, so five installs at once take little longer than the longest one.
test-setup:
	@$(MAKE) --no-print-directory -j6 $(STAMP) $(RUNTIME_STAMP) chromium c-compiler ls-venv anylabeling-venvs

# The installs and the runtime-only install check side by side (the check runs while the larger
# venvs still install), then pytest (whose summary closes the output); fails if either fails.
# Two pytest workers (pytest-xdist), work-stealing: the slow tests are spread evenly over both.
TEST_WORKERS ?= 2
test:
	@status=0; $(MAKE) --no-print-directory -j6 -k $(STAMP) check-runtime chromium c-compiler ls-venv anylabeling-venvs || status=$$?; \
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=40 tests || status=$$?; \
	exit $$status

# Runtime-only install: a separate venv with torch and `pip install .` (no extras), checked by
# tests/runtime/check_runtime_install.py. The venv is recreated when pyproject.toml or this
# Makefile change; finesam itself is reinstalled on every run from a fresh copy of the current
# tree (pip always reinstalls a local directory; the copy keeps stale build/ files out).
$(RUNTIME_STAMP): pyproject.toml Makefile
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	@# a CPU-only torch, as most runtime users install it (the local CPU wheel where this machine has
	@# one: a fifth of the CUDA build's size); finesam asks only torch>=2.1
	$(RUNTIME_PY) -m pip install -q 'torch==2.13.0+cpu' 2>/dev/null || $(RUNTIME_PY) -m pip install -q torch==2.14.1
	touch $(RUNTIME_STAMP)

check-runtime: $(RUNTIME_STAMP)
	rm -rf $(RUNTIME_SRC) && mkdir -p $(RUNTIME_SRC)
	tar -cf - --exclude=__pycache__ --exclude='*.egg-info' pyproject.toml README.md src | tar -xf - -C $(RUNTIME_SRC)
	$(RUNTIME_PY) -m pip install -q ./$(RUNTIME_SRC)
	$(RUNTIME_PY) tests/runtime/check_runtime_install.py --venv $(RUNTIME_VENV)

demo: $(STAMP)
	$(PY) -m finesam.cli.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_predictor.py

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) $(LS_VENV) $(ANYLABELING_VENV) $(X_ANYLABELING_VENV) demo-output .pytest_cache
