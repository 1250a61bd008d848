#!/usr/bin/env bash
# Set up, then run the demo: a Model Swarms search with SmolLM2-135M-Instruct and the shipped
# starter pool (experts/smollm2) on the capitals task (examples/capitals.json), on CPU.
# Extra arguments go to `modelswarms run` (e.g. --quiet).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
modelswarms run examples/demo.yaml --overwrite "$@"
