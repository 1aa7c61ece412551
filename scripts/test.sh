#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
NKB_EXTRAS=ingest,vectors,test bash scripts/setup.sh
# llama.cpp's OpenAI-compatible server for tests/test_openai_api.py. It compiles llama.cpp
# (several minutes on two cores, cached by pip afterwards). Where it cannot be built those
# tests skip, and the skip says why. The build is portable (GGML_NATIVE=OFF): built for the
# host's AVX-512 and AMX on a 2-core Xeon VM, the server segfaulted on its first completion.
CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  .venv/bin/python -m pip install -q -e ".[api-test]" \
  || echo "WARNING: llama-cpp-python[server] could not be built; the llama.cpp server tests will skip" >&2
bash .ci/install-cypher-lint
bash .ci/install-graphviz
.venv/bin/python -m pytest "$@"
