"""Benchmark: the whole activation-patching layer sweep beside one bare forward and beside the naive path.

In one process, alternating runs on the same donor/receiver pairs (de→fr donors into ru→zh receivers,
the pairs of ``llmlatent.patch_experiment``; ``--tiny``: a tiny random Llama with random-token prompts):

(a) bare   — ``model.hf(**model.encode(batch), logits_to_keep=1)`` over the receiver prompts, batched
             like the sweep (length order): the cheapest pass that reads every receiver once;
(b) patch  — ``patching.sweep`` at every layer (one prefix forward with a KV cache per batch, then one
             one-token forward per layer, the cache cropped back after each) **and** the streamed decode
             of all N × L final latents with the four token sets of the experiment;
(c) naive  — ``patching.sweep_naive``: one full patched forward per layer, plus the same decode. It is
             slow, so it runs on the first ``--naive-n`` pairs and its time is extrapolated per pair.

(b) and (c) must give the same final latents on the ``--naive-n`` pairs: relative difference ‖b − c‖ / ‖b‖ ≤ 1e-5
per row (Gemma's residual norms are ~4·10⁴, so float32 rounding alone gives absolute differences of ~10⁻²) and
the same decoded token-set probabilities (≤ 1e-4). The donor
latents (one forward over the donor prompts) are captured once, before timing, and reported apart.
Targets (CPU, embedded default, 100+ pairs): patch / bare ≤ 2.5, naive / patch ≥ 5.

    python benchmarks/bench_patch.py --json results/bench_patch.json
    python benchmarks/bench_patch.py --tiny --n 8 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_lens  # noqa: E402

from llmlatent import model as model_mod  # noqa: E402
from llmlatent import patching, tasks
from llmlatent.experiments import patching as patch_experiment
from llmlatent.lens import decode

TARGETS = {"patch_over_bare": 2.5, "naive_over_patch": 5.0}
PARITY_REL_TOL = 1e-5  # relative difference of final latents (float32 rounding of batched vs one-token attention)
PARITY_P_TOL = 1e-4  # absolute difference of decoded token-set probabilities


def setup(args: argparse.Namespace) -> tuple[model_mod.Model, list[str], list[str], dict[str, list]]:
    """Return (model, receiver prompts, donor prompts, the four token-set lists per pair)."""
    if args.tiny:
        model = bench_lens.synthetic_model("tiny", "cpu", torch.float32, seed=args.seed)
        vocab = model.unembedding.vocab_size
        frame = bench_lens.synthetic_prompts(vocab, 2 * args.n, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        sets = {
            name: [sorted({int(t) for t in rng.integers(3, vocab, size=2)}) for _ in range(args.n)]
            for name in patching.SETS
        }
        return model, frame["prompt"][: args.n].tolist(), frame["prompt"][args.n :].tolist(), sets
    model = model_mod.load(args.model)
    donor, receiver = patch_experiment.parse_spec(args.donor), patch_experiment.parse_spec(args.receiver, "--receiver")
    frames = {
        spec: tasks.build("translation", *spec, model.tokenizer, seed=args.seed).df.set_index("concept")
        for spec in (donor, receiver)
    }
    pool = sorted(set(frames[donor].index) & set(frames[receiver].index))
    ld, lr = frames[donor]["target_ids"].map(list).to_dict(), frames[receiver]["target_ids"].map(list).to_dict()
    pairs, _ = patching.make_pairs(pool, ld, lr, args.n, args.seed)
    if len(pairs) < args.n:  # more pairs than concepts: reuse receivers with the next donors
        pairs = [pairs[i % len(pairs)] for i in range(args.n)]
    sets = {
        "cd_lr": [lr[d] for d, _ in pairs],
        "cd_ld": [ld[d] for d, _ in pairs],
        "cr_lr": [lr[r] for _, r in pairs],
        "cr_ld": [ld[r] for _, r in pairs],
    }
    return (
        model,
        frames[receiver].loc[[r for _, r in pairs], "prompt"].tolist(),
        frames[donor].loc[[d for d, _ in pairs], "prompt"].tolist(),
        sets,
    )


def decoded(model: model_mod.Model, finals: torch.Tensor, sets: dict[str, list]) -> dict[str, torch.Tensor]:
    """Return the streamed decode of final latents [N, layers, hidden] with each pair's sets repeated per layer."""
    n, layers = finals.shape[:2]
    rows = {name: [s for s in values for _ in range(layers)] for name, values in sets.items()}
    return decode.decode(model.unembedding, finals.reshape(n * layers, -1), rows, k=1, energy=False)


def run_patch(model: model_mod.Model, receivers: list[str], donor: torch.Tensor, sets: dict, batch_size: int) -> tuple:
    """Return (final latents, decoded statistics) of the fast path (what the experiment does per donor)."""
    finals = patching.sweep(model, receivers, donor, batch_size=batch_size)
    stats = decoded(model, finals, sets)
    bench_lens.sync(model)
    return finals, stats


def run_naive(model: model_mod.Model, receivers: list[str], donor: torch.Tensor, sets: dict, batch_size: int) -> tuple:
    """Return (final latents, decoded statistics) of the naive path (L full patched forwards)."""
    finals = patching.sweep_naive(model, receivers, donor, batch_size=batch_size)
    stats = decoded(model, finals, sets)
    bench_lens.sync(model)
    return finals, stats


def benchmark(
    model: model_mod.Model,
    receivers: list[str],
    donors: list[str],
    sets: dict,
    *,
    batch_size: int,
    repeats: int,
    naive_n: int,
    log: object = print,
) -> dict:
    """Return medians, ratios and parity of bare forward, patch sweep and naive sweep (alternating, one process)."""
    t_donor, donor = bench_lens.timed(lambda: patching.donor_latents(model, donors, batch_size=batch_size))
    naive_n = min(naive_n, len(receivers))
    small = {name: values[:naive_n] for name, values in sets.items()}
    times: dict[str, list[float]] = {"bare": [], "patch": [], "naive": []}
    loads = [os.getloadavg()[0]]
    fast = naive = None
    for r in range(repeats):
        t, _ = bench_lens.timed(bench_lens.bare_forward, model, receivers, batch_size)
        times["bare"].append(t)
        t, fast = bench_lens.timed(run_patch, model, receivers, donor, sets, batch_size)
        times["patch"].append(t)
        t, naive = bench_lens.timed(run_naive, model, receivers[:naive_n], donor[:naive_n], small, batch_size)
        times["naive"].append(t * len(receivers) / naive_n)  # extrapolated per pair to all pairs
        loads.append(os.getloadavg()[0])
        log(
            f"repeat {r + 1}/{repeats}: "
            + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
            + f"  load {loads[-1]:.1f}"
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    (fast, fast_stats), (naive, naive_stats) = fast, naive
    rel = float(((fast[:naive_n] - naive).norm(dim=-1) / fast[:naive_n].norm(dim=-1).clamp_min(1e-30)).max())
    rows = naive_n * model.n_layers  # the fast path's first naive_n pairs are its first rows (pair-major)
    p_diff = max(float((fast_stats[f"p_{name}"][:rows] - naive_stats[f"p_{name}"]).abs().max()) for name in sets)
    return {
        "n_pairs": len(receivers),
        "n_layers": model.n_layers,
        "batch_size": batch_size,
        "repeats": repeats,
        "naive_n": naive_n,
        "donor_latents_seconds": t_donor,
        "bare_seconds": med["bare"],
        "patch_seconds": med["patch"],
        "naive_seconds_extrapolated": med["naive"],
        "patch_over_bare": med["patch"] / med["bare"],
        "naive_over_patch": med["naive"] / med["patch"],
        "targets": TARGETS,
        "parity_max_rel_diff": rel,
        "parity_max_abs_diff": float((fast[:naive_n] - naive).abs().max()),
        "parity_max_p_diff": p_diff,
        "parity_ok": rel <= PARITY_REL_TOL and p_diff <= PARITY_P_TOL,
        "runs": times,
        "load_average_1min": loads,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench_lens.common_args(parser)
    parser.add_argument("--n", type=int, default=128, help="donor/receiver pairs (default 128)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--naive-n", type=int, default=8, help="pairs for the (slow) naive path; time extrapolated")
    parser.add_argument("--donor", default="de:fr")
    parser.add_argument("--receiver", default="ru:zh")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama and random-token prompts (CPU check)")
    args = parser.parse_args(argv)
    bench_lens.prepare(args)
    model, receivers, donors, sets = setup(args)
    print(
        f"model {model.name}; {len(receivers)} pairs; {model.n_layers} layers; threads {torch.get_num_threads()}",
        flush=True,
    )
    bench_lens.bare_forward(model, receivers[:4], args.batch_size)  # warm-up
    out = benchmark(
        model, receivers, donors, sets, batch_size=args.batch_size, repeats=args.repeats, naive_n=args.naive_n
    )
    out = {**bench_lens.environment(model), "command": "python benchmarks/bench_patch.py " + " ".join(argv), **out}
    print()
    print(f"bare forward (receivers)   {out['bare_seconds']:8.2f} s")
    print(
        f"patch sweep + decode       {out['patch_seconds']:8.2f} s   patch / bare = {out['patch_over_bare']:.2f} "
        f"(target <= {TARGETS['patch_over_bare']}) -> "
        f"{'OK' if out['patch_over_bare'] <= TARGETS['patch_over_bare'] else 'MISSED'}"
    )
    print(
        f"naive sweep + decode       {out['naive_seconds_extrapolated']:8.2f} s   "
        f"naive / patch = {out['naive_over_patch']:.2f} (target >= {TARGETS['naive_over_patch']}) -> "
        f"{'OK' if out['naive_over_patch'] >= TARGETS['naive_over_patch'] else 'MISSED'}"
        f"  ({out['naive_n']} pairs, extrapolated)"
    )
    print(f"donor latents (once)       {out['donor_latents_seconds']:8.2f} s")
    print(
        f"parity patch vs naive: max relative |Δ| {out['parity_max_rel_diff']:.1e} "
        f"(absolute {out['parity_max_abs_diff']:.1e}), "
        f"token-set probabilities {out['parity_max_p_diff']:.1e} -> {'OK' if out['parity_ok'] else 'FAILED'}"
    )
    print(f"load average (1 min): {', '.join(f'{x:.1f}' for x in out['load_average_1min'])}")
    bench_lens.write_json(args.json, out)
    return 0 if out["parity_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
