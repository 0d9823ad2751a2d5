# make reproduce: the CPU pipeline behind the README's results table (see scripts/reproduce.sh for knobs).
PYTHON ?= python

.PHONY: reproduce bench-table compare test lint

reproduce:
	PYTHON=$(PYTHON) bash scripts/reproduce.sh

# Rebuild results/README_table.md from an existing combined bench, without rerunning anything.
bench-table:
	$(PYTHON) scripts/merge_bench.py results/README_table.md results/bench/bench.json \
		--title "Results: SmolLM2-135M-Instruct target on a 2-core CPU"

# Does a rerun repeat the table within noise? make compare B=<the rerun's results>/bench/bench.json
A ?= results/bench/bench.json
OUT ?= results/rerun.md
compare:
	$(PYTHON) scripts/compare_bench.py $(A) $(B) --out $(OUT)

test:
	$(PYTHON) -m pytest -q

lint:
	ruff check . && ruff format --check .
