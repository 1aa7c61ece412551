"""Throughput of the ingest compute core on the real bundled model (SmolLM2-135M by default).

    python scripts/bench_ingest.py                          # (a) 16k tokens, all layers; (b) all layers
    python scripts/bench_ingest.py --tokens 4096 --layers 0-9
    python scripts/bench_ingest.py --skip-lmhead --device cuda --dtype bfloat16

(a) Activation pass: ``ActivationCollector.process`` (statistics and top / random / quantile
    records for every requested layer) against a bare forward pass of the same model on the
    same batches: the transformer body (``model.base_model``, no LM head, which the pass
    never needs) and, for reference, the whole causal LM with its logits. For every batch
    the three run back to back, in a rotating order, so machine noise (other processes,
    frequency changes) hits all of them alike. Reported: tokens/s of each and the ratio
    pass / body (the goal is >= 0.9), hot path only and end to end (adding the set-up, which
    plans the sampled records, and building every layer's result frames).
(b) LM-head decoding: ``decode_layer`` for every requested layer (promoted, suppressed and
    read tokens, k=10) against the bare work it needs: per chunk of neurons, the products
    of the output / input rows with the unembedding and their top-k (and bottom-k), with
    the same chunking; the two alternate layer by layer. The goal is a ratio <= 1.2.

Results go to ``--out`` (JSON, with the machine) and a summary is printed. Each benchmark is
one function taking the loaded model and returning a JSON-able dict, so more can be added
next to them (a planned (c): the whole ingest job's time and peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ingest.activations import ActivationCollector, RecordConfig, buffer_bytes
from ingest.corpus import load_corpus, make_windows
from ingest.lmhead import decode_layer, unembedding
from ingest.models import LoadedModel, load_model

Log = Callable[[str], None]


def machine_info(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": _memory_gb(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": device,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # the benchmark needs it anyway; keep the report honest if it moved
        info["transformers"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """"all", "5", "0-9" or "0,3,7-9"."""
    if spec == "all":
        return list(range(n_layers))
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def summary(times: list[float]) -> dict[str, float]:
    return {"total_s": sum(times), "median_s": statistics.median(times), "min_s": min(times)}


# --------------------------------------------------------------------------------------------
# (a) activation pass vs bare forward


def bench_activation_pass(lm: LoadedModel, layers: list[int], tokens: int, window: int, batch_size: int,
                          cfg: RecordConfig, log: Log) -> dict:
    windows = make_windows(load_corpus(None), lm.tokenizer, window=window, max_tokens=tokens)
    token_ids, bos_id = windows.token_ids, windows.bos_id
    n_windows = len(token_ids)
    device = lm.device
    model = lm.model
    body = model.base_model

    def inputs(batch: np.ndarray) -> torch.Tensor:
        ids = torch.from_numpy(batch)
        if bos_id is not None:
            ids = torch.cat([torch.full((len(ids), 1), bos_id, dtype=torch.int64), ids], 1)
        return ids.to(device)

    def forward(module: torch.nn.Module) -> Callable[[np.ndarray, int], None]:
        def run(batch: np.ndarray, start: int) -> None:
            with torch.inference_mode():
                module(input_ids=inputs(batch), use_cache=False)
        return run

    log(f"(a) {n_windows} windows x {window} tokens, batch {batch_size}, layers {layers[0]}..{layers[-1]} "
        f"({len(layers)}), BOS {bos_id}")
    for start in range(0, min(2, n_windows // batch_size) * batch_size, batch_size):  # warm-up: page in, allocate
        forward(model)(token_ids[start:start + batch_size], start)

    t0 = time.perf_counter()
    collector = ActivationCollector(lm.adapter, layers, window, cfg, bos_id=bos_id, device=str(device),
                                    dtype=next(model.parameters()).dtype, n_windows=n_windows)
    _sync(device)
    setup_s = time.perf_counter() - t0

    runners = {"pass": collector.process, "body": forward(body), "full": forward(model)}
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for i, start in enumerate(range(0, n_windows, batch_size)):
        batch = token_ids[start:start + batch_size]
        for name in order[i % 3:] + order[:i % 3]:  # rotate who goes first
            _sync(device)
            t = time.perf_counter()
            runners[name](batch, start)
            _sync(device)
            times[name].append(time.perf_counter() - t)
        if (i + 1) % 10 == 0:
            done = (i + 1) * batch_size * window
            log(f"  {done} tokens: pass/body so far {sum(times['body']) / sum(times['pass']):.3f}")

    t0 = time.perf_counter()
    for layer in layers:
        collector.layer_results(layer)
    results_s = time.perf_counter() - t0

    n_tokens = int(token_ids.size)
    tps = {name: n_tokens / sum(t) for name, t in times.items()}
    per_batch = [b / p for b, p in zip(times["body"], times["pass"])]
    end_to_end = n_tokens / (setup_s + sum(times["pass"]) + results_s)
    return {
        "tokens": n_tokens, "windows": n_windows, "window": window, "batch_size": batch_size,
        "layers": len(layers), "bos_id": bos_id, "records": asdict(cfg),
        "buffer_mb_per_layer": round(buffer_bytes(lm.adapter.d_mlp, window, cfg) / 2**20, 1),
        "tokens_per_s": {"pass": tps["pass"], "bare_body": tps["body"], "bare_full": tps["full"]},
        "ratio_pass_vs_body": tps["pass"] / tps["body"],
        "ratio_pass_vs_full": tps["pass"] / tps["full"],
        "ratio_pass_vs_body_median_batch": statistics.median(per_batch),
        "setup_s": setup_s, "results_s": results_s,
        "end_to_end_tokens_per_s": end_to_end,
        "ratio_end_to_end_vs_body": end_to_end / tps["body"],
        "batches": {name: summary(t) for name, t in times.items()},
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# (b) LM-head decoding vs bare products + top-k


def bench_lmhead(lm: LoadedModel, layers: list[int], k: int, chunk: int, log: Log) -> dict:
    adapter, device = lm.adapter, lm.device
    unembed = unembedding(adapter, device)  # cached: both sides use the same copy

    def bare(layer: int) -> float:
        # The arithmetic decode_layer needs and nothing else: weights prepared outside the timing.
        out = adapter.fold_final_norm(adapter.w_out(layer).to(device))
        ins = [w.to(device) for w in adapter.w_in(layer).values()]
        _sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, out.shape[0], chunk):
                logits = out[start:start + chunk] @ unembed.T
                logits.topk(k, dim=1)
                logits.topk(k, dim=1, largest=False)
                for w in ins:
                    (w[start:start + chunk] @ unembed.T).topk(k, dim=1)
        _sync(device)
        return time.perf_counter() - t

    def ours(layer: int) -> float:
        t = time.perf_counter()
        decode_layer(adapter, layer, k=k, device=str(device), chunk=chunk)
        _sync(device)
        return time.perf_counter() - t

    log(f"(b) LM head: {len(layers)} layers x {adapter.d_mlp} neurons, k={k}, chunk={chunk}")
    bare(layers[0])  # warm-up
    times: dict[str, list[float]] = {"decode": [], "bare": []}
    for i, layer in enumerate(layers):
        pair = [("decode", ours), ("bare", bare)]
        for name, fn in (pair if i % 2 == 0 else pair[::-1]):
            times[name].append(fn(layer))
        log(f"  layer {layer}: decode {times['decode'][-1]:.2f} s, bare {times['bare'][-1]:.2f} s")
    n = len(layers) * adapter.d_mlp
    return {
        "neurons": n, "layers": len(layers), "k": k, "chunk": chunk,
        "decode_s": sum(times["decode"]), "bare_s": sum(times["bare"]),
        "ratio_decode_vs_bare": sum(times["decode"]) / sum(times["bare"]),
        "neurons_per_s": n / sum(times["decode"]),
        "per_layer": {name: summary(t) for name, t in times.items()},
    }


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--tokens", type=int, default=16384, help="corpus tokens for (a)")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--layers", default="all", help='(a) layers: "all", "0-9", "0,5,10"')
    ap.add_argument("--lmhead-layers", default="all", help="(b) layers")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--skip-activations", action="store_true")
    ap.add_argument("--skip-lmhead", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--out", default="bench-results/ingest.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    log(f"loaded {lm.source} in {time.perf_counter() - t0:.1f} s: {lm.adapter}")
    report: dict = {"model": args.model, "dtype": args.dtype, "machine": machine_info(str(lm.device)),
                    "load_average_before": _load_average()}
    if not args.skip_activations:
        report["activation_pass"] = bench_activation_pass(
            lm, parse_layers(args.layers, lm.adapter.n_layers), args.tokens, args.window, args.batch_size,
            RecordConfig(), log)
    if not args.skip_lmhead:
        report["lmhead"] = bench_lmhead(lm, parse_layers(args.lmhead_layers, lm.adapter.n_layers), args.k,
                                        args.chunk, log)

    # Other processes on the machine slow the bare and the measured runs alike (they alternate),
    # but record how busy it was: absolute figures from a loaded machine are not comparable.
    report["load_average_after"] = _load_average()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"machine: {report['machine']['cpu']} ({report['machine']['cpu_count']} cores, "
          f"{report['machine']['torch_threads']} torch threads), device {lm.device}, "
          f"load average {report['load_average_before']} -> {report['load_average_after']}")
    if "activation_pass" in report:
        a = report["activation_pass"]
        t = a["tokens_per_s"]
        print(f"(a) activation pass, {a['tokens']} tokens, {a['layers']} layers: "
              f"{t['pass']:.0f} tok/s vs bare body {t['bare_body']:.0f} tok/s -> ratio {a['ratio_pass_vs_body']:.3f} "
              f"(goal >= 0.9; median batch {a['ratio_pass_vs_body_median_batch']:.3f}); "
              f"vs full LM {t['bare_full']:.0f} tok/s -> {a['ratio_pass_vs_full']:.3f}; "
              f"end to end incl. set-up {a['setup_s']:.1f} s and results {a['results_s']:.1f} s: "
              f"{a['ratio_end_to_end_vs_body']:.3f}")
    if "lmhead" in report:
        b = report["lmhead"]
        print(f"(b) LM head, {b['neurons']} neurons: decode {b['decode_s']:.1f} s vs bare {b['bare_s']:.1f} s "
              f"-> ratio {b['ratio_decode_vs_bare']:.3f} (goal <= 1.2), {b['neurons_per_s']:.0f} neurons/s")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
