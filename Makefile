# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.trtbuild-installed

.PHONY: setup demo test test-gpu lint typecheck bench interop golden docs check clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,bench]'
	@# perf_analyzer (from tritonclient 2.51.0) links Debian's libb64
	@if ! ldconfig -p | grep -q libb64.so.0d; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq libb64-0d) >/dev/null; \
	  else echo "note: install libb64-0d (Debian) for perf_analyzer" >&2; fi; fi
	touch $@

demo: setup
	time $(VENV)/bin/trtbuild demo $(DEMO_ARGS)

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Inside the NGC container (nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3): the container's
# own Python, which has TensorRT-LLM and CUDA torch; see docs/engine.md for the docker run line.
test-gpu:
	python3 -m pip install -q --no-deps -e . && python3 -m pip install -q pytest pytest-timeout
	python3 -m pytest -m gpu tests/gpu -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy trtbuild builder ensembles

typecheck: setup
	$(VENV)/bin/mypy trtbuild builder ensembles

bench: setup
	$(PY) scripts/bench.py --out bench.json $(BENCH_ARGS)

# Third-party clients for real (extra installs, not part of make test): genai-perf, in its own venv
# because it pins its own dependencies, against the demo ensemble and BLS.
INTEROP_VENV := .venv-interop
interop: setup
	@test -x $(INTEROP_VENV)/bin/python || $(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/pip install -q 'genai-perf==0.0.8' 'tritonclient[all]==2.51.0' 'nvidia-cuda-runtime-cu12==12.9.79' 'numpy<2'
	$(PY) scripts/interop.py --genai-perf $(INTEROP_VENV)/bin/genai-perf --out interop.json

golden: setup
	$(VENV)/bin/pytest tests -k golden --update-golden

docs: setup
	$(PY) scripts/gen_cli_reference.py

check: lint test
	$(PY) scripts/gen_cli_reference.py --check

clean:
	rm -rf $(VENV) $(INTEROP_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
