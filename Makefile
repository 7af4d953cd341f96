# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
# Both create/refresh .venv from the repo's own files (pyproject.toml + constraints.txt).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export SECUREFVPA_HH_RLHF_DIR ?= $(abspath ../shared/data/relabeled_hh_rlhf)
export SECUREFVPA_POLIS_DIR ?= $(abspath ../shared/data/polis)

.PHONY: venv demo demo-polis test lint bench sweep clean

venv: $(STAMP)

# torch is installed first and pinned through constraints.txt: a looser resolve pulls a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# A new run directory each time (a run directory is never overwritten: it holds a ledger).
DEMO_OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(VENV)/bin/securefvpa run examples/demo.toml --out $(DEMO_OUT) --baseline fedbtl

# The same private recipe on real opinion groups (Polis, all 11 conversations, 3,431 users):
# too few users for epsilon 8 per pair — it ends below non-private FedBTL (examples/polis_private.toml).
demo-polis: $(STAMP)
	$(VENV)/bin/securefvpa run examples/polis_private.toml --out runs/polis-$(shell date +%Y%m%d-%H%M%S) --baseline fedbtl

# A small privacy-utility sweep (a few minutes); rerun to continue a killed one.
sweep: $(STAMP)
	$(VENV)/bin/securefvpa sweep examples/sweep.toml --out runs/sweep

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check securefvpa tests benchmarks audits examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/personalization.py --quick
	$(PY) benchmarks/federated.py --quick
	$(PY) benchmarks/dp.py --quick
	$(PY) benchmarks/secagg.py --quick

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
