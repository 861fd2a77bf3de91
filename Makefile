# Two commands do everything:  `make run` (install + whole pipeline)  and  `make test` (install,
# lint and format checks, tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Pipeline knobs, e.g. `make run SOURCE=local DATA_FILES="train=a.txt validation=b.txt" PRESET=gpu`
SOURCE     ?= auto
DATA_FILES ?=
PRESET     ?=
DATA_DIR   ?= data
OUT_DIR    ?= out

.PHONY: run test install install-dev clean

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

run: $(VENV)/.runtime
	$(PY) load_dataset.py --source $(SOURCE) --data-dir $(DATA_DIR) $(if $(DATA_FILES),--data-files $(DATA_FILES))
	$(PY) tokenization.py --data-dir $(DATA_DIR)
	$(PY) training.py --data-dir $(DATA_DIR) --out-dir $(OUT_DIR) $(if $(PRESET),--preset $(PRESET))
	$(PY) model_usage.py --checkpoint $(OUT_DIR)/best_model_params.pt

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) $(DATA_DIR) $(OUT_DIR)
