#!/usr/bin/env bash
# Interop check: selfspec exports read by real clients (speculators 0.9.0, economize 0.3.2) in throw-away venvs.
# Usage: bash scripts/interop_check.sh [pytest args]
# SELFSPEC_INTEROP_VENVS=DIR keeps the venvs between runs (first build ~9 min on 2 busy CPU cores; reuse: seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
export SELFSPEC_INTEROP=1
exec "${PYTHON:-/work/venv/bin/python}" -m pytest -q -m interop tests/interop "$@"
