# fpn_lab: two commands do all the set-up on a fresh machine.
#   make demo   - create the environment if missing, then train the demo headless (runs/<name>/)
#   make test   - create the environment if missing, then run the test suite
#   make docs   - build the documentation site into site/ (mkdocs build --strict)
#   make docs-serve - the site on http://127.0.0.1:8000 with search, rebuilt as files change (offline)
PY := .venv/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo test test-all docs docs-serve bench bench-parity necks lab clean-runs

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m fpn_lab.cli run params/demo.yaml

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ""

docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --strict

bench: setup
	bash bench/run_all.sh

bench-parity: setup
	bash bench/parity_runs.sh

necks: setup
	$(PY) bench/neck_study.py --run --seeds 0 1 2 --report

# JupyterLab refuses to start as root without --allow-root (containers, CI machines): pass it there
lab: setup
	.venv/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)
