# Two commands do everything on a fresh machine:  `make lab`  (install + open the course in JupyterLab)
# and  `make test`  (install + run the whole test suite, lecture notebooks and browser test included).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The shared ImageNet SqueezeNet weights, when present beside the repo, let lectures and tests use ImageNet.
SHARED_WEIGHTS := $(abspath $(wildcard ../shared/weights))
export VIZTOOLS_WEIGHTS_DIR ?= $(SHARED_WEIGHTS)
PYTEST_ARGS ?=
# Test files run in parallel processes (a notebook's cells stay together in one), one torch thread each.
TEST_WORKERS ?= 2

.PHONY: install lab test lint format browser-deps benchmarks exercises clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Works as root and on machines without a browser: prints the URL (with its token) to open.
lab: install
	$(VENV)/bin/viztools lab lectures

# Debian's Chromium for the browser test (Playwright's own browser download does not work offline).
# bubblewrap: the grader's sandbox for student kernels (viztools grade falls back to setrlimit without it).
browser-deps:
	@{ command -v chromium && command -v bwrap; } >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver bubblewrap; }

test: install browser-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/viztools build-exercises --check
	OMP_NUM_THREADS=1 $(PY) -m pytest tests lectures --nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
	  -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The development loop: lint and the unit tests, without the slow ones (@pytest.mark.slow) and the browser test.
.PHONY: test-fast
test-fast: install
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -m "not slow and not browser" -n $(TEST_WORKERS) --dist loadfile \
	  $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

exercises: install
	$(VENV)/bin/viztools build-exercises

benchmarks: install
	$(PY) benchmarks/bench_occlusion.py
	$(PY) benchmarks/bench_style.py
	$(PY) benchmarks/bench_startup.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_widgets.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output
