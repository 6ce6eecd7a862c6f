# Two entry points: `make demo` (main job, offline) and `make test` (whole suite).
# `make check-default`: the shipped checkpoints/demo equals its recipe (generator.recipe).
# Both create .venv on first use; torch is installed first with the pin that maps to a local CPU wheel.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install system-deps lint clean check-default

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[ui,dev]"
	touch $(STAMP)

system-deps:
	bash scripts/system-deps.sh

demo: install
	$(VENV)/bin/fusemix demo run --out outputs/demo

test: install system-deps
	$(PY) -m pytest -q

check-default: install
	$(VENV)/bin/fusemix demo make-default --check

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
