# `make demo` and `make test` each set up .venv on first use, so either works on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench study clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[train,dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m pmm_model.train --preset demo

# The ablation study on the synthetic set: 8 variants x 3 seeds, about 23 min on 2 quiet cores (resumes if rerun).
STUDY_ARGS ?= --seeds 3 --epochs 5 --eval-every 5 --out runs/study
study: $(VENV)/.installed
	$(PY) -m pmm_model.study $(STUDY_ARGS)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest tests

bench: $(VENV)/.installed
	$(PY) -m pytest benchmarks --benchmark-only

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks .hypothesis
