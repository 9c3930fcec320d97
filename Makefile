# Two commands a new user needs: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install everything on first use. torch is pinned to 2.13.0, which installs the
# local CPU wheel here (and a CUDA build on machines that have one).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup test demo bench clean docs reference

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

# The main job: SFT, PPO, DPO, IPO and KTO compared on family_tree over 2 seeds at an equal budget of 2,048
# training prompts and 2,048 preference labels per method, next to the baselines (best heuristic, sharpened
# SFT, best-of-n), with seed-aware intervals; prints the table and the report's path. The shorter SFT and
# reward-model runs (than configs/family_tree/*.yaml) and the smaller task data keep it within 10 minutes on
# 2 cores (3 seeds at 2,560 took 14 min 50 s, 2 seeds 10 min 22 s with setup); the study's `--seeds 5` is in
# the README.
# Running it again reuses every finished stage. DEMO_ARGS adds options, e.g. DEMO_ARGS="--seeds 5".
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/tinyrlhf compare --task family_tree --methods sft,ppo,dpo,ipo,kto --seeds 2 --budget 2048 \
		--out runs/demo sft.train.max_steps=800 reward.train.max_steps=250 data.n_pairs=4000 \
		data.n_rankings=0 data.n_binary=0 $(DEMO_ARGS)

# Training throughput against the matmul peak; then padded against packed batches (single-threaded).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_packing.py

# The documentation site (mkdocs.yml, pages in docs/): `make docs` installs the `docs` extra into .venv and
# builds the site into site/ with --strict, so a broken link or anchor fails. `make reference` rewrites
# docs/reference/ from the config dataclasses and the CLI parser (tests/test_docs.py fails while it is stale).
DOCS_STAMP := $(VENV)/.docs-installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,docs]'
	rm -f $(VENV)/.docs-installed-*
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

reference: $(STAMP)
	$(BIN)/python docs/gen_reference.py

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

# PPO speed and memory against TRL's experimental PPOTrainer (benchmarks/bench_ppo.py). TRL 1.12 is the
# last release with PPO, so it gets its own venv, .venv-bench-ppo (never .venv, never a dependency of the
# package). ARGS passes options, e.g. ARGS=--quick.
BENCH_PPO_VENV ?= .venv-bench-ppo
BENCH_PPO_STAMP := $(BENCH_PPO_VENV)/.installed-$(shell cat pyproject.toml benchmarks/requirements-bench-ppo.txt | cksum | cut -d' ' -f1)

.PHONY: bench-ppo

$(BENCH_PPO_STAMP): pyproject.toml benchmarks/requirements-bench-ppo.txt
	test -x $(BENCH_PPO_VENV)/bin/python || $(PY) -m venv $(BENCH_PPO_VENV)
	$(BENCH_PPO_VENV)/bin/pip install -q --disable-pip-version-check --upgrade pip
	$(BENCH_PPO_VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	$(BENCH_PPO_VENV)/bin/pip install -q --disable-pip-version-check -e .
	$(BENCH_PPO_VENV)/bin/pip install -q --disable-pip-version-check -r benchmarks/requirements-bench-ppo.txt
	rm -f $(BENCH_PPO_VENV)/.installed-*
	touch $(BENCH_PPO_STAMP)

bench-ppo: $(BENCH_PPO_STAMP)
	$(BENCH_PPO_VENV)/bin/python benchmarks/bench_ppo.py $(ARGS)
