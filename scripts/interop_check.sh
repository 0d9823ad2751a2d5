#!/usr/bin/env bash
# Interop check: selfspec exports read by real clients (speculators 0.9.0, economize 0.3.2) in throw-away venvs.
# Usage: bash scripts/interop_check.sh [pytest args]   (PYTHON=... picks the interpreter with selfspec installed;
# default: the repo's .venv when there is one, else python3 on PATH)
# SELFSPEC_INTEROP_VENVS=DIR keeps the venvs between runs (first build ~9 min on 2 busy CPU cores; reuse: seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
export SELFSPEC_INTEROP=1
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m pytest -q -m interop tests/interop "$@"
