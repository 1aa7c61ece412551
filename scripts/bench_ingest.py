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
next to them.
(c) The whole job as a user runs it (``--main-job``, ``--wide DIR``): ``nkb ingest`` in a
    subprocess into a fresh store; wall time, the stage split, and the peak RSS of the process
    tree. ``--main-job``: the bundled model at its defaults (goals: peak RSS <= 4 GiB, lmhead +
    activations <= 6 min on a quiet 2-core machine). ``--wide DIR``: the 8B-wide random Llama of
    ``scripts/make_wide_llama.py`` at bf16 (goal: peak RSS <= its weights + 4 GiB), with per-layer
    times and an extrapolation to Llama-3.1-8B's 32 layers and 128k vocabulary.

    python scripts/bench_ingest.py --main-job --out bench-results/main-job.json
    python scripts/bench_ingest.py --wide /tmp/wide-llama --out bench-results/wide.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ingest.activations import ActivationCollector, RecordConfig, buffer_bytes
from ingest.corpus import load_corpus, make_windows
from ingest.lmhead import decode_layer, unembedding
from ingest.memory import forward_tensor_bytes, tune_heap
from ingest.models import LoadedModel, load_model
from ingest.stages.model import window_prefix

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
# (c) the whole job as a user runs it: `nkb ingest` in a subprocess, into a fresh store

REPO = Path(__file__).resolve().parent.parent
# A stage's line in `nkb ingest`'s summary: name, layers, rows, seconds, and its peak RSS.
STAGE_LINE = re.compile(r"^(\S+)\s+(\d+) layers.*?([\d,]+) rows\s+([\d.]+) s(?:\s+peak RSS\s+([\d.]+) GB)?$")
GIB = 2**30


def run_ingest(args: list[str], log: Log) -> dict:
    """Run ``nkb ingest ARGS --store <fresh dir>`` as a child process; its wall time, the peak
    RSS of its process tree (the child's rusage from wait4: the largest of it and its reaped
    descendants, as getrusage(RUSAGE_CHILDREN) counts) and each stage's layers, rows and seconds."""
    with tempfile.TemporaryDirectory(prefix="nkb-bench-job-") as tmp:
        cmd = [sys.executable, "-m", "kb.cli", "ingest", *args, "--store", str(Path(tmp) / "kb")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        log("(c) " + " ".join(cmd[2:]))
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        t = time.perf_counter()
        with out.open("w") as fo, err.open("w") as fe:
            child = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, cwd=tmp)
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        stdout, stderr = out.read_text(), err.read_text()
    stages = {}
    for line in stdout.splitlines():
        m = STAGE_LINE.match(line.strip())
        if m:
            stages[m[1]] = {"layers": int(m[2]), "rows": int(m[3].replace(",", "")), "seconds": float(m[4]),
                            "peak_rss_gib_at_end": float(m[5]) if m[5] else None}
    result = {"command": ["nkb", "ingest", *args], "exit_code": child.returncode, "wall_s": round(wall, 1),
              "peak_rss_bytes": usage.ru_maxrss * 1024, "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
              "stages": stages}
    if child.returncode:
        result["stderr_tail"] = stderr.strip().splitlines()[-3:]
    log(f"  exit {child.returncode}, {wall:.0f} s, peak RSS {result['peak_rss_gib']} GiB, stages {stages}")
    return result


def bench_main_job(model: str, tokens: int | None, log: Log) -> dict:
    """The README's main command at its defaults (``--tokens`` only shortens it)."""
    args = [model] + (["--tokens", str(tokens)] if tokens else [])
    job = run_ingest(args, log)
    s = job["stages"]
    compute = sum(s[name]["seconds"] for name in ("lmhead", "activations") if name in s)
    job["lmhead_plus_activations_s"] = round(compute, 1)
    job["goals"] = {
        "succeeded": job["exit_code"] == 0,
        "peak_rss_le_4_gib": job["peak_rss_bytes"] <= 4 * GIB,
        # Only meaningful at the default --tokens, on a quiet 2-core machine.
        "lmhead_plus_activations_le_6_min": compute <= 360 if tokens is None else None,
    }
    return job


def bench_wide(directory: Path, tokens: int, log: Log, stages: str | None = None) -> dict:
    """An 8B-wide random Llama (scripts/make_wide_llama.py): ingest at bf16, then per-layer
    times and an extrapolation to Llama-3.1-8B's 32 layers and 128,256-token vocabulary."""
    sys.path.insert(0, str(REPO / "scripts"))
    import make_wide_llama

    if not (directory / "model.safetensors").exists():
        log(f"(c) writing the wide checkpoint to {directory}")
        make_wide_llama.write(directory)
    config = json.loads((directory / "config.json").read_text())
    weights = (directory / "model.safetensors").stat().st_size
    job = run_ingest([str(directory), "--dtype", "bfloat16", "--tokens", str(tokens),
                      *(["--stages", stages] if stages else [])], log)
    layers, vocab = config["num_hidden_layers"], config["vocab_size"]
    s = job["stages"]
    per_layer = {name: round(s[name]["seconds"] / max(1, s[name]["layers"]), 1)
                 for name in ("lmhead", "activations") if name in s}
    real_layers, real_vocab = 32, 128_256
    job.update({
        "model": {"layers": layers, "hidden": config["hidden_size"], "mlp": config["intermediate_size"],
                  "heads": config["num_attention_heads"], "kv_heads": config["num_key_value_heads"], "vocab": vocab},
        "weights_bytes": weights,
        "per_layer_s": per_layer,
        "goals": {"succeeded": job["exit_code"] == 0, "peak_rss_le_weights_plus_4_gib": job["peak_rss_bytes"] <= weights + 4 * GIB},
    })
    if len(per_layer) == 2:
        # An extrapolation, not a measurement: the LM-head work per layer grows with the
        # vocabulary (neurons x vocabulary products); the activation pass per layer does not,
        # and grows with the tokens (this run's --tokens; the default is 65,536).
        lm = per_layer["lmhead"] * real_layers * real_vocab / vocab
        act = per_layer["activations"] * real_layers
        job["extrapolated_llama_3_1_8b"] = {
            "layers": real_layers, "vocab": real_vocab, "tokens": tokens,
            "lmhead_s": round(lm), "activations_s": round(act), "total_min": round((lm + act) / 60, 1),
            "note": "extrapolated from this run's per-layer times on this machine (CPU); the LM-head paper's "
                    "'under 15 minutes for the whole model' is a GPU figure",
        }
    return job


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
    ap.add_argument("--glibc-heap", action="store_true",
                    help="(a), (b): leave glibc's heap at its defaults (nkb ingest fixes its thresholds, tune_heap)")
    ap.add_argument("--main-job", action="store_true",
                    help="(c) only: `nkb ingest MODEL` at its defaults in a subprocess (--tokens N shortens it)")
    ap.add_argument("--wide", type=Path, metavar="DIR",
                    help="(c) only: ingest the 8B-wide random Llama in DIR (written there first if absent) "
                         "with --dtype bfloat16 --tokens N (default 8192)")
    ap.add_argument("--wide-stages", metavar="LIST",
                    help="with --wide: run only these ingest stages (default: nkb ingest's default ones)")
    ap.add_argument("--out", default="bench-results/ingest.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.main_job or args.wide:
        tokens_given = "--tokens" in (argv if argv is not None else sys.argv[1:])
        report = {"machine": machine_info("cpu"), "load_average_before": _load_average()}
        if args.main_job:
            report["main_job"] = bench_main_job(args.model, args.tokens if tokens_given else None, log)
        if args.wide:
            report["wide"] = bench_wide(args.wide, args.tokens if tokens_given else 8192, log, args.wide_stages)
        report["load_average_after"] = _load_average()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        for name in ("main_job", "wide"):
            if name in report:
                r = report[name]
                split = ", ".join(f"{k} {v['seconds']} s" for k, v in r["stages"].items())
                print(f"{name}: exit {r['exit_code']}, {r['wall_s']} s wall, peak RSS {r['peak_rss_gib']} GiB, "
                      f"stages {split}; goals {r['goals']}")
                if "extrapolated_llama_3_1_8b" in r:
                    print(f"  per layer {r['per_layer_s']}; extrapolated to Llama-3.1-8B: {r['extrapolated_llama_3_1_8b']}")
        print(f"load average {report['load_average_before']} -> {report['load_average_after']}; written to {out}")
        return

    t0 = time.perf_counter()
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    log(f"loaded {lm.source} in {time.perf_counter() - t0:.1f} s: {lm.adapter}")
    heap_tuned = not args.glibc_heap and tune_heap(  # as nkb ingest does
        forward_tensor_bytes(lm.adapter.d_mlp, args.batch_size, args.window + len(window_prefix(lm.tokenizer))))
    report: dict = {"model": args.model, "dtype": args.dtype, "machine": machine_info(str(lm.device)),
                    "heap_tuned": heap_tuned, "load_average_before": _load_average()}
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
          f"load average {report['load_average_before']} -> {report['load_average_after']}; "
          f"heap {'tuned' if heap_tuned else 'glibc defaults'}")
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
