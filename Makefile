# Two commands on a fresh machine: `make demo` (the whole pipeline on Fashion-MNIST, with a report)
# and `make test`. Both install what they need first: system packages via apt-get where missing,
# a virtual environment in .venv, torch (the local CPU build when none is present), kdprune and its extras.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
APT_PACKAGES := dataset-fashion-mnist pkg-config libopencv-dev libturbojpeg0-dev g++
EXTRAS ?= dev,ffcv,dali,plot
STAMP := $(VENV)/.kdprune-$(EXTRAS)
SOURCES := $(wildcard csrc/*.cpp csrc/*.h) setup.py pyproject.toml

.PHONY: demo test install system-deps build bench reproduce clean gpu-check

demo: install
	$(PY) -m kdprune pipeline --name demo
	$(PY) -m kdprune reproduce --preset demo --jobs 2 --threads 1
	@echo "[kdprune] demo report: runs/demo/report.md (reduced reproduction: runs/reproduce/demo/results.md)"

test: install
	$(PY) -m pytest -q tests

install: system-deps $(STAMP) build

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml setup.py
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -q torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(PIP) install -q numpy tqdm ninja
	$(PIP) install -q --no-build-isolation -e ".[$(EXTRAS)]"
	touch $@

# Rebuild the C++ extension in place whenever a source changed (pip's editable install built it once).
build: $(STAMP)
	@$(PY) -c "import sys, os, glob; so = glob.glob('kdprune/_C*.so'); srcs = '$(SOURCES)'.split(); \
	sys.exit(0 if so and all(os.path.getmtime(so[0]) >= os.path.getmtime(s) for s in srcs) else 1)" \
	|| $(PY) setup.py -q build_ext --inplace

# Every benchmark, its rows appended under runs/bench (run a script directly to record into benchmarks/results/)
bench: install
	for n in $$($(PY) -m kdprune bench list); do $(PY) -m kdprune bench $$n --out runs/bench || exit 1; done

reproduce: install
	$(PY) -m kdprune reproduce --preset full --jobs 2 --threads 1 --write-alpha-fit --copy-to docs/results/full

# On a CUDA machine: build the extension in place, the Triton tests at full shapes, the loss benchmark
# against torch.compile and Liger, a ResNet-50 step; one JSON in runs/gpu-check/ (see the script's
# docstring). Uses the venv's python when there is one, else the machine's python3 and its torch (the
# GPU machine has no venv): no `install` needed.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_ARGS ?=
GPU_WHEELS := liger-kernel pytest pluggy iniconfig packaging pygments tqdm
gpu-check:
	@ls .wheels/liger_kernel-*.whl .wheels/pytest-*.whl >/dev/null 2>&1 || timeout 120 $(GPU_PY) -m pip download \
	  -q --no-deps --retries 0 --timeout 10 -d .wheels $(GPU_WHEELS) >/dev/null 2>&1 || \
	  echo "[kdprune] the wheels in .wheels/ are missing and not downloadable: the check runs without Liger"
	$(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf build kdprune/_C*.so *.egg-info
