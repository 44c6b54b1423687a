# Two commands do all set-up on a fresh machine with nothing but Python:
#   make run   - the main job with built-in defaults
#   make test  - the checks CI runs: lint (ruff, the import-linter layering contracts), the docs site build
#                (mkdocs --strict), then the test suite
# Each creates the virtual environment it needs ($(VENV)) and installs the project into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch is what CI uses; on a GPU machine: make TORCH='torch' ...
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: run test lint docs bench clean

$(STAMP): pyproject.toml Makefile
	@echo "make: creating $(VENV) and installing the project (first time only: 2-5 minutes)"
	$(PYTHON) -m venv $(VENV)
	@echo "make: [1/2] PyTorch ($(TORCH))"
	$(PY) -m pip install --quiet "$(TORCH)"
	@echo "make: [2/2] the project and its dev and docs extras"
	$(PY) -m pip install --quiet -e ".[dev,docs]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) train_rl.py

# The suite in TEST_WORKERS processes (pytest-xdist; each test file, or class, stays on one worker, so its fixtures are
# built once): 2 for a 2-core machine; 0 runs it in this process.
TEST_WORKERS ?= 2

test: lint docs
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

bench: $(STAMP)
	$(PY) benchmarks/backbone_streaming.py

clean:
	rm -rf $(VENV) build *.egg-info
