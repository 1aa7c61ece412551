"""The named Cypher query library: one ``*.cypher`` file per question (see kb/queries.py)."""
