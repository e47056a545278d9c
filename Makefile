# Two commands set everything up on a fresh machine: `make demo`, then `make test`.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
RECSYS := $(BIN)/recsys
RUNS ?= runs
export HF_HUB_OFFLINE ?= 1
export RECSYS_SHARED_DATA ?= $(abspath ../shared/data)

.PHONY: install demo test lint clean bench

install: $(VENV)/.installed

# torch first, pinned: a CPU wheel that satisfies the package's range, so that
# nothing below pulls a multi-gigabyte CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(RECSYS) train -c configs/popularity.yaml --fresh --no-progress
	$(RECSYS) train -c configs/mf.yaml --fresh
	$(RECSYS) train -c configs/lightgcn.yaml --fresh
	$(RECSYS) export $(RUNS)/lightgcn-movielens-small --split test --k 20 \
		--out $(RUNS)/lightgcn-movielens-small/recs_test.parquet
	@echo "== test metrics, movielens-small, leave-one-out =="
	@$(RECSYS) table $(RUNS)/popularity-movielens-small $(RUNS)/mf-movielens-small \
		$(RUNS)/lightgcn-movielens-small

lint: install
	$(BIN)/ruff check .

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(RUNS) .pytest_cache .ruff_cache
