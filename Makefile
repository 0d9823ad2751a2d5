# make reproduce: the CPU pipeline behind the README's results table (see scripts/reproduce.sh for knobs).
PYTHON ?= python

.PHONY: reproduce bench-table test lint

reproduce:
	PYTHON=$(PYTHON) bash scripts/reproduce.sh

# Rebuild results/README_table.md from an existing combined bench, without rerunning anything.
bench-table:
	$(PYTHON) scripts/merge_bench.py results/README_table.md results/bench/bench.json

test:
	$(PYTHON) -m pytest -q

lint:
	ruff check . && ruff format --check .
