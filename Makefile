# `make demo` and `make test` each set up .venv on first use, so either works on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[train,dev]'
	touch $@

DEMO_RUN := runs/pmm-synthetic

demo: $(VENV)/.installed
	$(PY) -m pmm_model.train --preset demo --output-dir $(DEMO_RUN)
	$(PY) -m pmm_model.visualize --checkpoint $(DEMO_RUN)/checkpoint.pt --data synthetic --out $(DEMO_RUN)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest tests

bench: $(VENV)/.installed
	$(PY) -m pytest benchmarks --benchmark-only

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks .hypothesis
