"""Fine-tune a copy of a model briefly and measure how many neurons keep their top promoted token.

The LM-head paper reports that more than 75% of Llama-3.1-8B's up-projection neurons keep
their top token from the base model to the instruct model. Offline, the nearest base /
fine-tune pair is the bundled model and a copy fine-tuned here for a few hundred steps on a
corpus (CPU; small batches). The script saves the copy as a local folder (ingest it with
``nkb ingest DIR --name NAME`` to match it against the base with ``nkb match BASE --to NAME``)
and measures, per layer, the share of neurons whose top promoted token (output direction
through the final norm and the unembedding, as the lmhead stage computes it) is unchanged.

Usage:
  python scripts/finetune_smollm2.py --out /tmp/smollm2-ft --steps 300 [--model smollm2-135m]
  python scripts/finetune_smollm2.py --model tests-tiny --steps 20 --out /tmp/tiny-ft   # a tiny model, seconds
Writes bench-results/finetune_top_token.json (or --json).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch


def top_tokens(adapter) -> np.ndarray:
    """[layers, d_mlp] top promoted token id of every neuron."""
    unembed = adapter.unembed()
    out = []
    with torch.inference_mode():
        for layer in range(adapter.n_layers):
            out.append((adapter.fold_final_norm(adapter.w_out(layer)) @ unembed.T).argmax(dim=1).numpy())
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m", help="bundled name, local dir, or tests-tiny")
    ap.add_argument("--out", required=True, help="folder for the fine-tuned copy")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--tokens", type=int, default=200_000, help="corpus tokens to draw batches from")
    ap.add_argument("--json", default="bench-results/finetune_top_token.json")
    args = ap.parse_args()
    from ingest.adapters import adapter_for
    from ingest.corpus import load_corpus, make_windows

    if args.model == "tests-tiny":
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tinymodels import save_tiny_model

        folder = save_tiny_model(Path(args.out + "-base"), "llama", seed=0)
        from ingest.models import load_model

        lm = load_model(str(folder))
    else:
        from ingest.models import load_model

        lm = load_model(args.model)
    base = lm.model
    tuned = copy.deepcopy(base).train()
    windows = make_windows(load_corpus("pydoc"), lm.tokenizer, window=args.window, max_tokens=args.tokens)
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(tuned.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    losses = []
    for step in range(args.steps):
        batch = torch.as_tensor(windows.token_ids[rng.integers(0, windows.n_windows, args.batch)])
        loss = tuned(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach().item())
        if (step + 1) % 25 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps}: loss {np.mean(losses[-25:]):.3f}, {time.perf_counter() - t0:.0f} s",
                  flush=True)
    train_s = time.perf_counter() - t0
    tuned.eval()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    tuned.save_pretrained(args.out)
    lm.tokenizer.save_pretrained(args.out)
    before, after = top_tokens(adapter_for(base)), top_tokens(adapter_for(tuned))
    same = (before == after).mean(axis=1)
    res = {"model": args.model, "steps": args.steps, "batch": args.batch, "window": args.window, "lr": args.lr,
           "train_s": round(train_s, 1), "loss_first": round(losses[0], 3), "loss_last": round(float(np.mean(losses[-10:])), 3),
           "same_top_token_share": round(float(same.mean()), 4),
           "same_top_token_by_layer": [round(float(x), 4) for x in same], "saved_to": args.out,
           "paper": "LM-head paper: > 75% of Llama-3.1-8B up-projection neurons keep their top token, base -> instruct"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
