# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.trtbuild-installed

.PHONY: setup demo test test-gpu lint typecheck bench bench-gpu bench-instances interop golden docs docs-check check clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,bench]'
	@# perf_analyzer (from tritonclient 2.51.0) links Debian's libb64
	@if ! ldconfig -p | grep -q libb64.so.0d; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq libb64-0d) >/dev/null; \
	  else echo "note: install libb64-0d (Debian) for perf_analyzer" >&2; fi; fi
	@# mpirun (Open MPI) launches the portable runtime's rank groups (trtbuild engine --tp N)
	@if ! command -v mpirun >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin) >/dev/null; \
	  else echo "note: install openmpi-bin (Debian) to serve portable engines split with --tp" >&2; fi; fi
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

# The embedded tiny model (fp32, CPU, one torch thread; the repository `trtbuild demo` renders):
# the core model, the full ensemble and the BLS measured side by side by `trtbuild perf` at
# concurrency 1/4/16. Results go to .bench/perf/ (results.json, results.csv, report.html, PNGs);
# bench.json is no longer written (results.json holds what it held, and more).
BENCH_DIR := .bench
bench: setup
	@test -f $(BENCH_DIR)/demo/repository/trtbuild-repo.json || $(VENV)/bin/trtbuild demo --workdir $(BENCH_DIR)/demo --force >/dev/null
	$(VENV)/bin/trtbuild perf $(BENCH_DIR)/demo/repository --compare-models --concurrency 1,4,16 \
	  --input-len 32 --output-len 64 --label "tiny Llama (seed 0, fp32)" --out $(BENCH_DIR)/perf --force $(BENCH_ARGS)

# On any machine with a CUDA GPU, with its own python3 (CUDA torch + transformers): the portable
# runtime on random Llama-3-8B-shaped bf16 weights (same bytes and FLOPs as the real model), in
# process and served by tritonserver (the nvidia-pytriton wheel; a numpy<2 wheel for its stub
# environment if that python3 has numpy 2); with perf_analyzer on PATH (tritonclient 2.51.0's
# wheel) its served phase also runs trtbuild perf. JSON per phase in .bench/gpu; see
# docs/perf/h200.md.
BENCH_GPU_OUT ?= .bench/gpu
bench-gpu:
	python3 scripts/bench_gpu.py --out $(BENCH_GPU_OUT) $(BENCH_GPU_ARGS)

# Replicas on one host: the tiny model with 1 and 2 portable-runtime CPU instances under the same
# load (trtbuild perf; BENCH_INSTANCES_ARGS='--loader grpc' where perf_analyzer is missing).
# JSON in .bench/instances; measurements in docs/deploy.md.
bench-instances: setup
	$(PY) scripts/bench_instances.py --out $(BENCH_DIR)/instances $(BENCH_INSTANCES_ARGS)

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

# What CI runs (.ci/run): formatting, lint, types, the generated CLI reference, then the tests.
check: lint docs-check test

docs-check: setup
	$(PY) scripts/gen_cli_reference.py --check

clean:
	rm -rf $(VENV) $(INTEROP_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
