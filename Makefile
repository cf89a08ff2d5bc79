# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers for `make test`: one more than the CPUs the OS shows (many tests wait on a
# server or a subprocess; on 2 idle cores 3 workers ran the suite in 589 s where 2 took about 640 s);
# each test file runs whole on one worker, the files with slow tests first (tests/conftest.py orders them).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
PYTEST_XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cxr demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_XDIST)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_XDIST) -m "not slow"

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf .cxr bench/results
