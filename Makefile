# PriMIA on Flower. `make demo` and `make test` work on a fresh machine: both set up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
CRYPTEN := crypten==0.4.1
STAMP  := $(VENV)/.setup-done

.PHONY: setup demo test test-fast lint bench-central bench-inference bench-dp audit clean

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml or this Makefile changes.
# 1. torch CPU first, then used as a constraint so no dependency can pull a CUDA build.
# 2. the project with its dev tools.
# 3. crypten with --no-deps: its metadata asks for torchvision, pandas, tensorboard and the
#    dead `sklearn` package, none needed at run time (its real needs are in pyproject.toml).
$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps $(CRYPTEN)
	@if $(PIP) list 2>/dev/null | grep -i nvidia; then echo "CUDA packages were pulled in" >&2; exit 1; fi
	@$(PY) scripts/check_install.py
	touch $(STAMP)

demo: setup
	$(PY) -m scripts.train secure=smpc logger=none hydra.run.dir=outputs/demo
	$(PY) -m scripts.encrypted_demo --checkpoint outputs/demo/final.pt

test: setup
	$(PY) -m pytest -p no:cacheprovider --durations=25

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench-central: setup
	$(PY) -m scripts.bench_central

bench-inference: setup
	$(PY) -m scripts.bench_inference

bench-dp: setup
	$(PY) -m scripts.bench_dp

audit: setup
	$(PY) -m scripts.audit

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
