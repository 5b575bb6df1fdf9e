#!/usr/bin/env bash
# Set up .venv (container + training requirements) on first use, then run the test suite.
# Usage: ./run_tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ] || [ requirements.txt -nt "$VENV/.installed" ] || [ training/requirements.txt -nt "$VENV/.installed" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet -r requirements.txt -r training/requirements.txt
  touch "$VENV/.installed"
fi
exec "$VENV/bin/python" -m pytest "$@"
