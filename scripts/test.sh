#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
NKB_EXTRAS=ingest,vectors,test bash scripts/setup.sh
bash .ci/install-cypher-lint
.venv/bin/python -m pytest "$@"
