#!/usr/bin/env bash
# The main job: set up a fresh machine, ingest the bundled SmolLM2-135M into the embedded
# store, then ask it a few questions. Re-running resumes or, when done, changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NKB_STORE=${NKB_STORE:-$PWD/demo-kb}
nkb() { .venv/bin/nkb "$@"; }

nkb ingest smollm2-135m
echo; echo "== What is in the store"
nkb stats
echo; echo "== Neurons that most promote ' dog' through the LM head"
nkb query --name promotes_token -p token=" dog" -p limit=10
neuron=$(nkb query --name promotes_token -p token=" dog" -p limit=1 --format csv | sed -n 2p | cut -d, -f1)
echo; echo "== The card of $neuron: its tokens, and the text it fires on most (firing tokens marked)"
nkb show "$neuron"
echo; echo "== Layer-0 neurons whose Neuron-to-Graph pattern fires on ' ValueError' (N2G runs on layer 0 by default)"
nkb search --fires-on " ValueError" --layers 0 --k 5
