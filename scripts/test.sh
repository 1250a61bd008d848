#!/usr/bin/env bash
# Set up (if needed) and run the checks and the test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests bench
# Two workers (pytest-xdist), one thread each (tests/conftest.py): CI's two cores; many tests
# are mostly Python and a kill test mostly waits for its child, so one process leaves a core
# idle. MODELSWARMS_TEST_WORKERS=0 runs them in this process.
python -m pytest -q -n "${MODELSWARMS_TEST_WORKERS:-2}" --dist loadgroup "$@"
