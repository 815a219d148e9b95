# The two commands of the README, and their helpers. Each target bootstraps .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SMOKE_DIR := _build/smoke
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export PYTHONHASHSEED := 0
# Where torch comes from: the PyTorch project's CPU-only wheels by default (PyPI's Linux wheel
# pulls several GB of CUDA libraries). With a GPU, pick its CUDA build, e.g.
# `make book TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128`; empty: pip's own index.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

.PHONY: book test data debian clean

# Get the data first (stops, naming every missing file, when it cannot), then execute every
# chapter with its default (book) profile, then render the site to _build/html.
book: $(STAMP) debian
	$(PY) -m lib data fetch
	$(PY) -m lib run --profile book --jobs 2
	$(PY) -m lib build

# Download what is missing from the data directory ($$REPRO_DATA), check every sha256.
data: $(STAMP)
	$(PY) -m lib data fetch

# The whole test suite: unit tests, notebook lint, smoke runs of every chapter, the site in a
# browser, then nbval re-executes the smoke notebooks and compares their claim tables.
test: $(STAMP) debian
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadscope --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg $(SMOKE_DIR)/executed/smoke/*.ipynb

$(STAMP): pyproject.toml requirements-nodeps.txt
	test -x $(PY) || python3 -m venv $(VENV)
	@# torch first, from $(TORCH_INDEX_URL) (its dependencies come with the next line), so
	@# that nothing pulls another build
	$(PY) -m pip install -q --no-deps $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) \
		torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

# Debian packages: chromium (the browser test) and dataset-fashion-mnist (the compression
# chapter's CNN data). Installed only when missing; CI runs as root, elsewhere sudo is used.
DEBIAN_PACKAGES := chromium dataset-fashion-mnist
debian:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; \
	fi

clean:
	rm -rf _build
