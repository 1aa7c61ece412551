#!/usr/bin/env bash
# Loads an `nkb export DIR --format neo4j-admin` directory into the compose Neo4j with
# neo4j-admin's bulk importer (much faster than any transactional load for millions of rows).
#
#   docker/neo4j-admin-import.sh DIR [DATABASE]     # DATABASE defaults to neo4j
#
# neo4j-admin needs the database offline: the script stops the compose service, runs the
# import in a one-off container on the same data volume (replacing that database), and
# starts the service again. Then: nkb stats --store bolt://127.0.0.1:7687
set -euo pipefail
dir=$(cd "${1:?usage: $0 EXPORT_DIR [DATABASE]}" && pwd)
db=${2:-neo4j}
[ -x "$dir/import.sh" ] || { echo "$dir is not a neo4j-admin export (no import.sh)" >&2; exit 1; }
compose=(docker compose -f "$(dirname "$0")/docker-compose.yml")
"${compose[@]}" stop neo4j
"${compose[@]}" run --rm --no-deps -v "$dir:/import:ro" --entrypoint /import/import.sh neo4j "$db"
"${compose[@]}" up -d --wait neo4j
