# Everything a fresh machine needs, in the project's own virtual environment (never the
# system's: PyTorch Lightning also installs a package named `lightning`).
#   make test   set up, build (CPU + CUDA kernels when nvcc is found), ctest + pytest
#   make demo   set up, build, run the main job (examples/demo.py)
# The build installs the checkout into the venv in development mode: $(VENV)/bin/python then
# imports lightning and im2win from any directory.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.14.1
# torchvision built for TORCH_VERSION (bench_im2win's ResNet-50 steps and their smoke test)
TORCHVISION_VERSION ?= 0.29.1
VPY := $(VENV)/bin/python

# nvcc on PATH may be a wrapper script: torch needs the real toolkit root.
CUDA_HOME ?= $(firstword $(foreach d,/usr/local/cuda /usr/local/cuda-13.0,$(if $(wildcard $(d)/bin/nvcc),$(d),)))
export CUDA_HOME
export TORCH_CUDA_ARCH_LIST ?= 9.0
export MAX_JOBS ?= $(shell nproc)
# Every step builds with the venv's ninja: another ninja version would rewrite the build log
# and compile everything again.
export PATH := $(abspath $(VENV))/bin:$(PATH)

SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' -o -name '*.py') setup.py

.PHONY: venv build test ctest pytest demo bench clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==$(TORCH_VERSION) numpy pytest ninja pybind11 setuptools wheel matplotlib
	$(VPY) -m pip install -q torchvision==$(TORCHVISION_VERSION) transformers
	touch $@

build: $(VENV)/.built $(VENV)/.editable
$(VENV)/.built: $(VENV)/.installed $(SOURCES)
	$(VPY) setup.py -q build_ext --inplace
	touch $@

# Once per venv: an editable install maps the packages onto this checkout, so later builds
# need no reinstall; its build step finds the objects of the build above up to date.
$(VENV)/.editable: pyproject.toml | $(VENV)/.built
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

ctest: $(VENV)/.installed
	cmake -S . -B build-cmake -DCMAKE_BUILD_TYPE=Release $(if $(CUDA_HOME),-DCMAKE_CUDA_COMPILER=$(CUDA_HOME)/bin/nvcc) > /dev/null
	cmake --build build-cmake -j $(MAX_JOBS) > /dev/null
	cd build-cmake && ctest --output-on-failure

pytest: build
	$(VPY) -m pytest -q

test: ctest pytest

demo: build
	$(VPY) examples/demo.py

bench: build
	$(VPY) benchmarks/bench_lightning.py
	$(VPY) benchmarks/bench_im2win.py

clean:
	rm -rf build build-cmake lightning/_C*.so im2win/_C*.so $(VENV)/.built
