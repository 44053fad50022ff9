# The two commands a new user runs: `make demo` and `make test`.
# Both create/reuse .venv and install what they need; safe to run twice.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MKDOCS := NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

.PHONY: demo demo-images test lint docs setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,docs,images]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m scoresde demo --overwrite

# The image demo: a tiny U-Net on 8x8 digits (runs/demo_images; docs/images.md).
demo-images: $(STAMP)
	$(PY) -m scoresde demo --images --overwrite

# The docs build runs before pytest so that pytest's summary stays the last line. One pytest
# run covers the tests and the notebooks in docs/notebooks (executed top to bottom by nbmake,
# outputs not written back).
test: $(STAMP)
	$(PY) -m ruff check scoresde tests experiments benchmarks
	$(MKDOCS) --quiet
	$(PY) -m pytest -q tests docs/notebooks --nbmake

# The documentation site (mkdocs.yml) into site/; --strict turns every warning into an error.
docs: $(STAMP)
	$(MKDOCS)

lint: $(STAMP)
	$(PY) -m ruff check scoresde tests experiments benchmarks

clean:
	rm -rf $(VENV) build site *.egg-info
