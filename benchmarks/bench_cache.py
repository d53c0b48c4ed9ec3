"""Benchmark: ``latents.collect`` (the on-disk latent cache) beside ``lens.sweep`` on the same prompts.

In one process, alternating runs: (a) ``lens.sweep``; (b) ``latents.collect`` into a fresh folder
(deleted after each run, so nothing is resumed); optionally (c) the bare batched forward
(``--with-bare``). By default the methods alternate chunk by chunk (``--chunk`` 64 prompts = one
cache shard, order alternating) and each repeat's times are summed, so that load changes on a
shared machine hit both alike; ``--interleave pass`` alternates whole passes. Prints median
seconds and collect/sweep (target ≤ 1.1×); also times ``lens.from_latents`` on the last repeat's
stores (the lens without the model) and reports how far its rows are from the live sweep's
(float16 storage error).

    python benchmarks/bench_cache.py --json results/bench_cache.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_lens  # noqa: E402

from llmlatent import latents, tasks
from llmlatent import model as model_mod  # noqa: E402
from llmlatent.lens import last_token as lens

TARGET = 1.1


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench_lens.common_args(parser)
    parser.add_argument("--pair", default="fr-zh")
    parser.add_argument("--n", type=int, default=None, help="number of prompts (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float16", help="storage dtype of the cache (default float16)")
    parser.add_argument("--with-bare", action="store_true", help="also time the bare batched forward")
    parser.add_argument(
        "--interleave",
        choices=["chunk", "pass"],
        default="chunk",
        help="alternate the methods chunk by chunk (default; robust to load changes) or whole passes",
    )
    parser.add_argument("--chunk", type=int, default=64, help="prompts per alternation (default 64 = one cache shard)")
    args = parser.parse_args(argv)
    bench_lens.prepare(args)

    model = model_mod.load(args.model)
    src, tgt = args.pair.split("-")
    prompts = tasks.build("translation", src, tgt, model.tokenizer, n=args.n)
    print(f"model {model.name}; {len(prompts)} prompts, batch {args.batch_size}, cache dtype {args.dtype}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="llmlatent-bench-cache-"))

    def collect(piece: tasks.PromptSet, name: str) -> object:
        return latents.collect(model, piece, root / name, batch_size=args.batch_size, dtype=args.dtype, progress=False)

    # warm-up (one batch each; builds the energy Gram matrix once)
    warm = tasks.PromptSet(prompts.df.iloc[: args.batch_size].reset_index(drop=True), meta=dict(prompts.meta))
    lens.sweep(model, warm, batch_size=args.batch_size, progress=False)
    latents.collect(model, warm, root / "warm", batch_size=args.batch_size, dtype=args.dtype, progress=False)
    shutil.rmtree(root / "warm")

    times: dict[str, list[float]] = {"sweep": [], "collect": []} | ({"bare": []} if args.with_bare else {})
    loads = [os.getloadavg()[0]]
    chunk = len(prompts) if args.interleave == "pass" else args.chunk
    pieces = [
        tasks.PromptSet(prompts.df.iloc[i : i + chunk].reset_index(drop=True), meta=dict(prompts.meta))
        for i in range(0, len(prompts), chunk)
    ]
    cached_parts, live_parts, from_cache, size = [], [], 0.0, 0
    try:
        for r in range(args.repeats):
            spent = dict.fromkeys(times, 0.0)
            last = r == args.repeats - 1
            for i, piece in enumerate(pieces):
                steps = ["sweep", "collect"] if (i + r) % 2 == 0 else ["collect", "sweep"]
                if args.with_bare:
                    steps.insert(i % 3, "bare")
                for step in steps:
                    if step == "bare":
                        t, _ = bench_lens.timed(bench_lens.bare_forward, model, piece.prompts, args.batch_size)
                    elif step == "sweep":
                        t, rows = bench_lens.timed(bench_lens.run_sweep, model, piece.df, args.batch_size)
                        if last:
                            live_parts.append(rows)
                    else:
                        t, store = bench_lens.timed(collect, piece, f"r{r}c{i}")
                    spent[step] += t
                if last:  # the lens from the cache, without a forward pass
                    t0 = time.perf_counter()
                    cached_parts.append(lens.from_latents(store, model, progress=False))
                    from_cache += time.perf_counter() - t0
                    size += store.size_bytes()
                shutil.rmtree(store.path)
            for key, value in spent.items():
                times[key].append(value)
            loads.append(os.getloadavg()[0])
            print(
                f"repeat {r + 1}/{args.repeats}: "
                + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
                + f"  (collect/sweep {times['collect'][-1] / times['sweep'][-1]:.3f})  load {loads[-1]:.1f}",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows, cached = pd.concat(live_parts, ignore_index=True), pd.concat(cached_parts, ignore_index=True)
    numeric = ["p_target", "p_english", "p_source", "entropy"]
    merged = cached.merge(rows, on=["prompt_id", "layer"], suffixes=("_cache", ""))
    diffs = {
        c: float(np.nanmax(np.abs(merged[c].to_numpy(float) - merged[f"{c}_cache"].to_numpy(float))))
        for c in numeric
        if merged[c].notna().any()
    }
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        **bench_lens.environment(model),
        "command": "python benchmarks/bench_cache.py " + " ".join(argv),
        "model": model.name,
        "n": len(prompts),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "cache_dtype": args.dtype,
        "sweep_seconds": med["sweep"],
        "collect_seconds": med["collect"],
        "collect_over_sweep": med["collect"] / med["sweep"],
        "target": TARGET,
        "target_ok": med["collect"] / med["sweep"] <= TARGET,
        "from_latents_seconds": from_cache,
        "from_latents_over_sweep": from_cache / med["sweep"],
        "store_bytes": size,
        "cache_vs_live_max_abs_diff": diffs,
        "interleave": args.interleave,
        "chunk": chunk,
        "collect_over_sweep_per_repeat": [c / s for c, s in zip(times["collect"], times["sweep"])],
        "runs": times,
        "load_average_1min": loads,
    }
    if args.with_bare:
        result["bare_seconds"] = med["bare"]
        result["collect_over_bare"] = med["collect"] / med["bare"]
    print()
    if args.with_bare:
        print(f"bare forward        {med['bare']:8.2f} s")
    print(f"lens.sweep          {med['sweep']:8.2f} s   (median of {args.repeats})")
    print(
        f"latents.collect     {med['collect']:8.2f} s   collect/sweep = {result['collect_over_sweep']:.3f}"
        f" (target <= {TARGET}) -> {'OK' if result['target_ok'] else 'MISSED'}"
    )
    print(
        f"lens.from_latents   {from_cache:8.2f} s   "
        f"(no forward pass; {result['from_latents_over_sweep']:.2f}x the sweep)"
    )
    print(
        f"store {size / 2**20:.1f} MiB; cache vs live max |diff|: "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
    )
    print(f"load average (1 min) during the runs: {', '.join(f'{x:.1f}' for x in loads)}")
    bench_lens.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
