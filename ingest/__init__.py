"""Computing knowledge-base data from models: adapters, corpus, stages. Needs the [ingest] extra."""
