#!/usr/bin/env bash
# The optional extras' tests: Hugging Face datasets, lm-evaluation-harness, the trackers and
# Ray. CI runs scripts/test.sh, where these skip (their packages add ~1.2 GB and ~3 minutes of
# install and test, beyond CI's time); run this before changing any of them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
pip install -q -e ".[datasets,lm-eval,trackers,ray]"
python -m pytest -q tests/test_hf_data.py tests/test_lm_eval.py tests/test_trackers.py \
    tests/test_ray.py "$@"
