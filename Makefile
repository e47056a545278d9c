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
	$(RECSYS) index $(RUNS)/lightgcn-movielens-small --kind hnsw --eval
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

# A screenshot of `recsys report` for REPORT_RUNS (headless Chromium, offline:
# `apt-get install -y chromium`); the PNG is reduced below 1 MB.
REPORT_RUNS ?= $(RUNS)/lightgcn-ml100k-loo $(RUNS)/tune-ml100k-reg1e-5 $(RUNS)/content-ml100k-cold10
REPORT_SCREENSHOT ?= docs/report_screenshot.png
REPORT_HEIGHT ?= 8500
.PHONY: report-screenshot
report-screenshot: install
	RECSYS=$(RECSYS) PYTHON=$(BIN)/python HEIGHT=$(REPORT_HEIGHT) \
		bench/screenshot_report.sh $(REPORT_SCREENSHOT) $(REPORT_RUNS)
