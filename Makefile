# Two commands a new user needs: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install everything on first use. torch is pinned to 2.13.0, which installs the
# local CPU wheel here (and a CUDA build on machines that have one).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup test demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	$(BIN)/tinyrlhf sft --config configs/family_tree/sft.yaml
	$(BIN)/tinyrlhf reward --config configs/family_tree/reward.yaml
	$(BIN)/tinyrlhf dpo --config configs/family_tree/dpo.yaml
	$(BIN)/tinyrlhf kto --config configs/family_tree/kto.yaml

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf runs

# DPO/KTO speed and memory against TRL (benchmarks/bench_dpo.py). TRL lives only in its own venv,
# .venv-bench, never in .venv or the package's dependencies. ARGS passes options, e.g. ARGS=--quick.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell cat pyproject.toml benchmarks/requirements-bench.txt | cksum | cut -d' ' -f1)

.PHONY: bench-dpo

$(BENCH_STAMP): pyproject.toml benchmarks/requirements-bench.txt
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check --upgrade pip
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check -e .
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check -r benchmarks/requirements-bench.txt
	rm -f $(BENCH_VENV)/.installed-*
	touch $(BENCH_STAMP)

bench-dpo: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/bench_dpo.py $(ARGS)
