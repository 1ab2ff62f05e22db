# PriMIA on Flower. `make demo` and `make test` work on a fresh machine: both set up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Which torch build: cpu (the default) or cuda (`make setup TORCH=cuda`, docs/development.md).
TORCH  ?= cpu
CRYPTEN := crypten==0.4.1
ifeq ($(TORCH),cpu)
# This machine's pip finds the CPU wheel, 2.13.0+cpu, among its local wheels: a local label
# sorts above the plain release, so `==` picks it over the registry's CUDA build.
TORCH_REQ := torch==2.13.0
else ifeq ($(TORCH),cuda)
# `===` matches the version string exactly: the registry's default Linux wheel, 2.13.0 (the
# CUDA build, with its nvidia-* and cuda-* libraries), never 2.13.0+cpu.
TORCH_REQ := torch===2.13.0
else
$(error TORCH=$(TORCH) is not a torch build this Makefile installs: use TORCH=cpu or TORCH=cuda)
endif
# One stamp per build, so that switching TORCH re-runs the setup.
STAMP  := $(VENV)/.setup-done-$(TORCH)
BUILT  := $(VENV)/.torch-build

.PHONY: setup demo test test-fast lint bench-central bench-inference bench-dp audit clean

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml, this Makefile or TORCH changes.
# 0. a .venv of the other torch build is removed first: pip keeps an installed torch that
#    satisfies ==2.13.0 whatever its build, and the CUDA build's nvidia-* libraries would stay
#    beside a CPU torch. A .venv without $(BUILT) predates TORCH and holds the CPU build.
# 1. torch first (TORCH=cpu: the CPU wheel; TORCH=cuda: the CUDA build), then used as a
#    constraint so that no dependency can pull another build.
# 2. the project with its dev tools.
# 3. crypten with --no-deps: its metadata asks for torchvision, pandas, tensorboard and the
#    dead `sklearn` package, none needed at run time (its real needs are in pyproject.toml).
$(STAMP): pyproject.toml Makefile constraints.txt
	@built=$$(cat $(BUILT) 2>/dev/null || echo cpu); if [ -d $(VENV) ] && [ "$$built" != $(TORCH) ]; \
	  then echo "$(VENV) holds the $$built build of torch; rebuilding it for TORCH=$(TORCH)"; \
	  rm -rf $(VENV); fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_REQ)"
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps $(CRYPTEN)
	@if [ $(TORCH) = cpu ] && $(PIP) list 2>/dev/null | grep -iE '^(nvidia|cuda)-'; then \
	  echo "CUDA packages were pulled in" >&2; exit 1; fi
	@$(PY) scripts/check_install.py --torch $(TORCH)
	echo $(TORCH) > $(BUILT)
	rm -f $(VENV)/.setup-done-*
	touch $(STAMP)

demo: setup
	$(PY) -m scripts.train secure=smpc logger=none hydra.run.dir=outputs/demo
	$(PY) -m scripts.encrypted_demo --checkpoint outputs/demo/final.pt

# Two workers, each test file on one of them (--dist loadfile): a file's module fixtures (a
# deployment, a TLS round) are set up once, and the many tests that wait on other processes
# (SuperLinks, SuperNodes, CrypTen parties) leave a core free for the other worker.
test: setup
	$(PY) -m pytest -p no:cacheprovider -n 2 --dist loadfile --durations=25

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
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache .cache
