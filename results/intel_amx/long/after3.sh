#!/usr/bin/env bash
# After after2.sh: economize 0.3.2 on the long EAGLE-3 again (does the 1.20x repeat?).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
R=results/intel_amx/long
while [ ! -f $R/after2.done ]; do sleep 15; done
$PY scripts/economize_compare.py --venv /work/venvs/economize --drafter outputs/reproduce/eagle3/drafter \
    > $R/economize_2.md 2> $R/economize_2.log
echo done > $R/after3.done
