#!/usr/bin/env bash
# Set up (if needed) and run the checks and the test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests bench
python -m pytest -q "$@"
