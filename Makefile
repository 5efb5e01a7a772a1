# `make demo` and `make test` each set up .venv on first use, so either works on a fresh clone.
# `make test PY=/some/venv/bin/python` uses that interpreter as it is instead (no set-up, no install).
PYTHON ?= python3
VENV := .venv
PY ?= $(VENV)/bin/python
ifeq ($(origin PY),file)
SETUP := $(VENV)/.installed
else
SETUP :=
endif

# The GPU check runs on a CUDA machine with torch, triton, pytest and hypothesis already
# installed (no venv): `make gpu-check GPU_RESULTS=/some/folder`.
GPU_PYTHON ?= python3
GPU_RESULTS ?= gpu-results

.PHONY: demo test test-fast lint wheel-check bench study static-check gpu-check clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[train,deploy,dev,clients]'
	$(PY) -m pip install --no-deps 'fastreid==1.4.0'
	touch $@

# The demo's run folder is disposable: each `make demo` starts it afresh.
DEMO_RUN := runs/pmm-synthetic

demo: $(SETUP)
	$(PY) -m pmm_model.train --preset demo --output-dir $(DEMO_RUN) --overwrite
	$(PY) -m pmm_model.visualize --checkpoint $(DEMO_RUN)/checkpoint.pt --data synthetic --out $(DEMO_RUN)
	$(PY) -m pmm_model.cli.extract --checkpoint $(DEMO_RUN)/checkpoint.pt --data synthetic \
		--split gallery --out $(DEMO_RUN)/gallery.npz --workers 0
	$(PY) -m pmm_model.cli.export --checkpoint $(DEMO_RUN)/checkpoint.pt --data synthetic \
		--split query --out $(DEMO_RUN)/model.onnx

# The ablation study on the synthetic set: 8 variants x 3 seeds, each trained as `make demo`
# trains PMM (resumes where it stopped if rerun).
STUDY_ARGS ?= --seeds 3 --out runs/study
study: $(SETUP)
	$(PY) -m pmm_model.study $(STUDY_ARGS)

# The suite plus the docstring examples of both packages, in one pytest run. The tests run with
# this checkout first on PYTHONPATH, so the subprocesses they start (torchrun, the CLIs) import it.
PYTEST := PYTHONPATH=$(CURDIR) $(PY) -m pytest tests pmm_kernels pmm_model --doctest-modules

# CI's command (`.ci/run`): lint, format and type checks, then every test and doctest.
test: lint
	$(PYTEST)

# The same without the end-to-end runs (tests marked `slow`): the tier to run while editing.
test-fast: lint
	$(PYTEST) -m "not slow"

lint: $(SETUP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The wheel as users install it, in a fresh venv (see .ci/wheel_check.sh); WHEEL_VENV is
# removed and created afresh.
WHEEL_VENV ?= $(or $(TMPDIR),/tmp)/pmm-wheel-venv
wheel-check:
	bash .ci/wheel_check.sh $(WHEEL_VENV)

# The benchmarks write their results to files that the docs cite: BENCH_RESULTS.json as
# pytest-benchmark records it, and BENCH_RESULTS.md, its table.
BENCH_RESULTS ?= benchmarks/results/cpu/bench
bench: $(SETUP)
	mkdir -p $(dir $(BENCH_RESULTS))
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-json $(BENCH_RESULTS).json
	$(PY) -m benchmarks.report $(BENCH_RESULTS).json

static-check: $(SETUP)
	$(PY) -m pmm_kernels.testing.static_check

gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_RESULTS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .benchmarks .hypothesis $(GPU_RESULTS)
