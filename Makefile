# The two commands a new user runs: `make demo` and `make test`.
# Both create/reuse .venv and install what they need; safe to run twice.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m scoresde demo

test: $(STAMP)
	$(PY) -m ruff check scoresde tests experiments
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check scoresde tests experiments

clean:
	rm -rf $(VENV) build *.egg-info
