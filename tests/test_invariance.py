"""Batch sizes change how work is cut up, never what is stored.

- ``--batch-size`` (windows per forward pass) and a run resumed with another one store the
  same knowledge base as the clean run of tests/tinyingest.py.
- The embedded store's write batch size (rows per atomic batch) stores the same graph: 1, 7
  and the default on a small seeded knowledge base, written and then updated; and a whole
  ingest written in batches of 251 rows (not aligned with anything the stages write). A
  whole ingest in batches of 1 or 7 would cost thousands of transactions, minutes here.

Float tolerance: the activation pass itself is batch-invariant to the bit (its statistics
are merged in window-aligned groups), but the model's forward is not: CPU matrix kernels may
round differently for another number of rows, so activations computed in batches of 3 and 8
may differ in the last bits. Stored floats are therefore compared to 1e-5 relative (float32
rounding, with room for a few operations), the float16 activation strings to 1e-3 relative
(float16 rounding); everything else (ids, ranks, positions, which records were chosen, the
metadata) must be identical. Where this machine's forward happens to be batch-invariant, the
dumps are simply equal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dump import dump, without_run_configs
from ingest.pipeline import Reporter, ingest
from kb import schema
from kb.records import decode_activations
from kb.stores import open_store
from kbdata import NODE_ORDER, make_small_kb


def columns(table: str) -> list[str]:
    if table in schema.REL_BY_TYPE:
        return ["src", "dst", *schema.rel_type(table).columns]
    return (schema.META if table == schema.META.label else schema.node_type(table)).columns


def assert_same_kb(got: dict, want: dict) -> None:
    """Equal dumps, floats to the tolerances of the module docstring."""
    assert got.keys() == want.keys()
    for table, rows in want.items():
        assert len(got[table]) == len(rows), table
        names = columns(table)
        for g, w in zip(got[table], rows):
            for name, x, y in zip(names, g, w):
                where = f"{table}.{name} of {w[0]!r}"
                if table == "ACTIVATES_ON" and name == "activations":
                    a, b = decode_activations(x), decode_activations(y)
                    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max() + 1e-6, err_msg=where)
                elif isinstance(y, float) or (isinstance(y, tuple) and y and isinstance(y[0], float)):
                    np.testing.assert_allclose(np.asarray(x, dtype=float), np.asarray(y, dtype=float),
                                               rtol=1e-5, atol=1e-7, err_msg=where)
                else:
                    assert x == y, where


def ingested(url: str, cfg, store_batch: int | None = None, reporter: Reporter | None = None) -> dict:
    with open_store(url, create=True) as store:
        if store_batch is not None:
            store.default_batch_size = store_batch
        ingest(store, cfg, reporter)
        return without_run_configs(dump(store))


@pytest.mark.parametrize("batch_size", [3, 40])
def test_forward_batch_size_does_not_change_the_kb(tiny_run, tmp_path, batch_size):
    got = ingested(str(tmp_path / "kb"), tiny_run.config(batch_size=batch_size))
    assert_same_kb(got, without_run_configs(tiny_run.dump))


class Killed(Exception):
    pass


class DieDuringPass(Reporter):
    """Raises at the 3rd batch of the activation pass (checkpointed after the 2nd)."""

    stage, batches = None, 0

    def begin(self, stage, total, unit):
        self.stage = stage

    def advance(self, n):
        if self.stage == "activations":
            self.batches += 1
            if self.batches == 3:
                raise Killed


def test_resumed_with_another_batch_size(tiny_run, tmp_path):
    url = str(tmp_path / "kb")
    with pytest.raises(Killed):
        ingested(url, tiny_run.config(batch_size=8), reporter=DieDuringPass())
    assert (tmp_path / "kb" / "artifacts" / "tiny" / "activations.pt").exists()
    got = ingested(url, tiny_run.config(batch_size=5))
    assert_same_kb(got, without_run_configs(tiny_run.dump))


def test_embedded_write_batches_across_a_whole_ingest(tiny_run, tmp_path):
    got = ingested(str(tmp_path / "kb"), tiny_run.config(), store_batch=251)
    assert got == without_run_configs(tiny_run.dump)  # same forward, so exact


def small_kb() -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """A slice of kbdata's knowledge base (one model's first layer), and changes to it."""
    kb = make_small_kb()
    nodes = {label: kb.nodes[label] for label in NODE_ORDER}
    neurons = nodes["Neuron"][(nodes["Neuron"]["model"] == "alpha") & (nodes["Neuron"]["layer"] == 0)]
    keep = set(neurons["id"])
    nodes = {"Model": nodes["Model"][nodes["Model"]["id"] == "alpha"], "Token": nodes["Token"].iloc[:12],
             "Neuron": neurons, "Snippet": nodes["Snippet"].iloc[:3]}
    tokens, snippets = set(nodes["Token"]["id"]), set(nodes["Snippet"]["id"])
    rels = {}
    for rel in ("HAS_NEURON", "PROMOTES", "READS", "ACTIVATES_ON"):
        df = kb.rels[rel]
        dst = tokens if rel in ("PROMOTES", "READS") else snippets if rel == "ACTIVATES_ON" else keep
        rels[rel] = df[df["src"].isin(keep | {"alpha"}) & df["dst"].isin(dst)]
    assert all(len(df) for df in rels.values())
    changes = {"Neuron": neurons[["id"]].iloc[::2].assign(max_act=42.0),
               "PROMOTES": rels["PROMOTES"].iloc[::2].assign(logit=-1.0)}
    return {**nodes, **rels}, changes


@pytest.mark.parametrize("batch_size", [1, 7, None], ids=["1", "7", "default"])
def test_embedded_write_batch_size_does_not_change_the_kb(tmp_path, batch_size):
    frames, changes = small_kb()
    dumps = []
    for size in (batch_size, 100_000):  # 100,000: one batch per frame, the reference
        with open_store(str(tmp_path / f"kb{size}"), create=True) as store:
            for name, df in frames.items():
                (store.upsert_rels if name in schema.REL_BY_TYPE else store.upsert_nodes)(name, df, batch_size=size)
            for name, df in changes.items():  # updates of stored rows, across batch boundaries
                (store.upsert_rels if name in schema.REL_BY_TYPE else store.upsert_nodes)(name, df, batch_size=size)
            dumps.append(dump(store))
    assert dumps[0] == dumps[1]
    assert len(dumps[0]["Neuron"]) == len(frames["Neuron"]) and any(42.0 in row for row in dumps[0]["Neuron"])
