#!/usr/bin/env bash
# The optional extras' tests: Hugging Face datasets, lm-evaluation-harness and the trackers.
# CI runs scripts/test.sh, where these skip (their packages add ~1 GB and minutes of install
# and test, beyond CI's time); run this before changing any of them. (Ray is a test
# dependency: its tests run in scripts/test.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
pip install -q -e ".[datasets,lm-eval,trackers]"
python -m pytest -q tests/test_hf_data.py tests/test_lm_eval.py tests/test_trackers.py "$@"
