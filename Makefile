# Two commands set everything up on a fresh machine: `make demo`, then `make test`.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
RECSYS := $(BIN)/recsys
RUNS ?= runs
export HF_HUB_OFFLINE ?= 1
export RECSYS_SHARED_DATA ?= $(abspath ../shared/data)

.PHONY: install demo serve smoke test lint clean bench

install: $(VENV)/.installed

# torch first, pinned: a CPU wheel that satisfies the package's range, so that
# nothing below pulls a multi-gigabyte CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The demo: the one-stage semantic-ID model (DAS) next to LightGCN on the built-in dataset,
# shortened to a few minutes; `recsys train -c configs/das.yaml` trains to convergence.
DEMO_DAS_EPOCHS ?= 15
DEMO_LGCN_EPOCHS ?= 20
DEMO_ITEMS ?= 1 260 2571
DEMO_PORT ?= 8000
DAS_RUN := $(RUNS)/demo-das
LGCN_RUN := $(RUNS)/demo-lightgcn
demo: install
	@echo "== recsys demo on MovieLens latest-small (built in), leave-one-out split"
	@echo "   shortened: DAS $(DEMO_DAS_EPOCHS) epochs, LightGCN $(DEMO_LGCN_EPOCHS); to convergence:"
	@echo "   $(RECSYS) train -c configs/das.yaml   (and configs/lightgcn.yaml)"
	@echo "== 1/5 DAS: item content -> semantic IDs, trained in one stage with the recommender"
	@$(RECSYS) train -c configs/das.yaml --fresh --brief name=demo-das \
		trainer.max_epochs=$(DEMO_DAS_EPOCHS)
	@echo "== 2/5 LightGCN, the collaborative baseline"
	@$(RECSYS) train -c configs/lightgcn.yaml --fresh --brief name=demo-lightgcn \
		trainer.max_epochs=$(DEMO_LGCN_EPOCHS)
	@echo "== 3/5 a FAISS HNSW index of DAS's items (calibrated on its users)"
	@$(RECSYS) index $(DAS_RUN) --kind hnsw | $(BIN)/python -c "import json, sys; \
		m = json.load(sys.stdin); print(m['path'], m['factory'], m['params'], m['calibration'])"
	@echo "== 4/5 the HTML report"
	@$(RECSYS) report $(DAS_RUN) $(LGCN_RUN) --out $(RUNS)/demo-report.html
	@echo "== 5/5 results"
	@echo "-- test metrics (full ranking, seen items masked)"
	@$(RECSYS) table $(DAS_RUN) $(LGCN_RUN)
	@echo "-- DAS's item semantic IDs: health"
	@$(RECSYS) inspect $(DAS_RUN) --examples 0
	@echo "-- three items, their semantic IDs and items sharing the first two codes"
	@$(RECSYS) inspect $(DAS_RUN) --items $(DEMO_ITEMS)
	@echo "-- the report: $(abspath $(RUNS))/demo-report.html"
	@echo "-- serve DAS over HTTP:  make serve   (or: $(RECSYS) serve $(DAS_RUN) --port $(DEMO_PORT))"
	@echo "   then, in another shell:  make smoke   (every endpoint once), or by hand:"
	@echo "   curl 'http://127.0.0.1:$(DEMO_PORT)/v1/users/1/recommendations?k=5'"
	@echo "   curl -X POST http://127.0.0.1:$(DEMO_PORT)/v1/recommendations -H 'content-type: application/json' -d '{\"history\": [\"1\", \"260\", \"2571\"], \"k\": 5}'"
	@echo "   curl 'http://127.0.0.1:$(DEMO_PORT)/v1/items/2571/similar?k=5'"
	@echo "   curl -X POST http://127.0.0.1:$(DEMO_PORT)/v1/items -H 'content-type: application/json' -d '{\"item_id\": \"my-movie\", \"text\": {\"title\": \"A space opera\", \"genres\": \"Action|Sci-Fi\"}}'"
	@echo "   curl http://127.0.0.1:$(DEMO_PORT)/v1/items/my-movie/semantic-id"

# The API over the demo's DAS run, on loopback only.
serve: install
	$(RECSYS) serve $(DAS_RUN) --host 127.0.0.1 --port $(DEMO_PORT)

# Every endpoint of a running `make serve` once, answers printed (non-zero exit on a non-2xx).
smoke: install
	$(BIN)/python -m recsys.serve.smoke --run $(DAS_RUN) --url http://127.0.0.1:$(DEMO_PORT)

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
